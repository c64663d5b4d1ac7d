#!/usr/bin/env bash
# Send an image to `gainx serve` with curl and print its JSON answer (docs/serve.md).
#
#   export/clients/serve_curl.sh IMAGE [URL] [TOPK] [HEATMAP_PNG]
#
# IMAGE is uploaded as the multipart field `file` to POST URL/v1/predict?topk=TOPK
# (URL defaults to http://127.0.0.1:8000, TOPK to 1). With HEATMAP_PNG, the first
# prediction's heatmap (base64 PNG at the model's input size) is decoded into that file.
# An error answer is printed as well, and the script then exits with curl's status 22.
set -euo pipefail

usage="usage: $0 IMAGE [URL] [TOPK] [HEATMAP_PNG]"
image=${1:?$usage}
url=${2:-http://127.0.0.1:8000}
topk=${3:-1}
heatmap=${4:-}

status=0
answer=$(curl --silent --show-error --fail-with-body -F "file=@${image}" "${url%/}/v1/predict?topk=${topk}") || status=$?
printf '%s\n' "$answer"
if ((status != 0)); then
    exit "$status"
fi

if [[ -n $heatmap ]]; then
    # The server writes compact JSON: the text after the first `"heatmap_png":"` up to the next quote.
    awk -F '"heatmap_png":"' '{ split($2, rest, "\""); printf "%s", rest[1] }' <<<"$answer" | base64 -d >"$heatmap"
fi
