"""bench.run: results of a partial run (-k) merged into the existing results.json."""

from __future__ import annotations

from bench.run import markdown, merge


def _bench(group: str, name: str, median: float) -> dict:
    stats = {"median": median, "mean": median, "stddev": 0.0, "rounds": 5}
    return {"group": group, "name": name, "stats": stats, "extra_info": {"baseline": name == "base"}}


def test_merge_replaces_only_the_groups_measured() -> None:
    old = {
        "datetime": "2026-01-01",
        "quick": False,
        "commit_info": {"id": "old"},
        "benchmarks": [_bench("a", "base", 1.0), _bench("a", "x", 2.0), _bench("b", "base", 3.0)],
    }
    new = {"datetime": "2026-02-02", "quick": False, "commit_info": {"id": "new"}, "device": "cpu-x-2c"}
    new["benchmarks"] = [_bench("b", "base", 4.0), _bench("b", "y", 2.0)]
    data = merge(old, new)
    assert [(b["group"], b["name"], b["stats"]["median"]) for b in data["benchmarks"]] == [
        ("a", "base", 1.0),
        ("a", "x", 2.0),
        ("b", "base", 4.0),
        ("b", "y", 2.0),
    ]
    assert data["datetime"] == "2026-02-02" and set(data["merged"]) == {"a"}
    assert data["merged"]["a"]["datetime"] == "2026-01-01"
    again = merge(data, {**new, "datetime": "2026-03-03", "benchmarks": [_bench("a", "base", 5.0)]})
    assert again["merged"] == {"b": {"datetime": "2026-02-02", "commit_info": {"id": "new"}, "quick": False}}
    table = markdown({**data, "machine_info": {}})
    assert "Kept from an earlier run (2026-01-01" in table.split("## b")[0] and "Kept" not in table.split("## b")[1]
