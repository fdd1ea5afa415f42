"""StateStore contract: DynamoStateStore (moto), SqliteStateStore and the MemoryState double behave the same."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from nacelle.local.adapters.state import SqliteStateStore
from shared.errors import ConfigurationError
from shared.ports import StateStore

VALUES: dict[str, Any] = {
    "s": "text", "empty": "", "i": 42, "neg": -7, "big": 2**53 + 1, "f": 0.1, "tiny": 1.5e-7, "large": 1e21,
    "t": True, "no": False, "null": None, "list": [1, 2.5, "a", None, True, {"k": [False, 0.25]}],
    "map": {"a": {"b": {"c": [1, {"d": "deep"}]}}, "x y": 3.75}, "empty_list": [], "empty_map": {},
}


def test_missing_item_is_none(state_store: StateStore) -> None:
    assert state_store.get("nope", "nope") is None


def test_json_values_round_trip(state_store: StateStore) -> None:
    assert state_store.put("p", "s", VALUES) is True
    assert state_store.get("p", "s") == {**VALUES, "pk": "p", "sk": "s"}


def test_floats_stay_floats_and_ints_ints(state_store: StateStore) -> None:
    state_store.put("p", "s", {"f": 2.5, "i": 3, "nested": [0.5, 7]})
    item = state_store.get("p", "s")
    assert item is not None
    assert type(item["f"]) is float and type(item["i"]) is int
    assert [type(v) for v in item["nested"]] == [float, int]


def test_put_replaces_the_whole_item(state_store: StateStore) -> None:
    state_store.put("p", "s", {"a": 1, "b": 2})
    assert state_store.put("p", "s", {"a": 3}) is True
    assert state_store.get("p", "s") == {"pk": "p", "sk": "s", "a": 3}


def test_an_item_read_back_can_be_put_back(state_store: StateStore) -> None:
    state_store.put("p", "s", {"a": 1})
    item = state_store.get("p", "s")
    assert item is not None
    state_store.put("p", "s", {**item, "a": 2})
    assert state_store.get("p", "s") == {"pk": "p", "sk": "s", "a": 2}
    with pytest.raises(ConfigurationError):
        state_store.put("p", "other", item)  # its sk contradicts the key


def test_put_if_absent(state_store: StateStore) -> None:
    assert state_store.put("p", "s", {"v": 1}, if_absent=True) is True
    assert state_store.put("p", "s", {"v": 2}, if_absent=True) is False
    assert state_store.put("p", "s", {"v": 1}, if_absent=True) is False
    assert state_store.get("p", "s") == {"pk": "p", "sk": "s", "v": 1}
    assert state_store.put("p", "s2", {"v": 2}, if_absent=True) is True  # same pk, other sk


def test_update_if_applies_when_expected_matches(state_store: StateStore) -> None:
    state_store.put("job", "j1", {"status": "InProgress", "attempt": 1, "keep": "me"})
    assert state_store.update_if("job", "j1", {"status": "Completed", "metrics": {"f1": 0.9}},
                                 {"status": "InProgress", "attempt": 1}) is True
    assert state_store.get("job", "j1") == {"pk": "job", "sk": "j1", "status": "Completed", "attempt": 1,
                                            "keep": "me", "metrics": {"f1": 0.9}}


def test_update_if_refuses_when_any_expected_differs(state_store: StateStore) -> None:
    state_store.put("job", "j1", {"status": "InProgress", "attempt": 1})
    assert state_store.update_if("job", "j1", {"status": "Failed"}, {"status": "InProgress", "attempt": 2}) is False
    assert state_store.update_if("job", "j1", {"status": "Failed"}, {"missing": "x"}) is False
    assert state_store.get("job", "j1") == {"pk": "job", "sk": "j1", "status": "InProgress", "attempt": 1}


def test_update_if_expected_absent(state_store: StateStore) -> None:
    # Claim a lease that nobody holds: creates the item, then the same claim fails.
    assert state_store.update_if("lease", "retrain", {"owner": "a"}, {"owner": None}) is True
    assert state_store.get("lease", "retrain") == {"pk": "lease", "sk": "retrain", "owner": "a"}
    assert state_store.update_if("lease", "retrain", {"owner": "b"}, {"owner": None}) is False
    assert state_store.update_if("lease", "retrain", {"owner": "b"}, {"owner": "a", "other": None}) is True
    assert state_store.get("lease", "retrain") == {"pk": "lease", "sk": "retrain", "owner": "b"}


def test_update_if_expected_none_matches_a_stored_null(state_store: StateStore) -> None:
    state_store.put("p", "s", {"owner": None})
    assert state_store.update_if("p", "s", {"owner": "a"}, {"owner": None}) is True


def test_update_if_on_a_missing_item_with_expected_values_fails(state_store: StateStore) -> None:
    assert state_store.update_if("p", "s", {"v": 1}, {"v": 0}) is False
    assert state_store.get("p", "s") is None


def test_update_if_without_expectations_upserts(state_store: StateStore) -> None:
    assert state_store.update_if("p", "s", {"v": 1}, {}) is True
    assert state_store.update_if("p", "s", {"w": None}, {}) is True
    assert state_store.get("p", "s") == {"pk": "p", "sk": "s", "v": 1, "w": None}


def test_update_if_compares_typed_values(state_store: StateStore) -> None:
    state_store.put("p", "s", {"n": 1, "b": True, "f": 0.1, "l": [1, "a"], "m": {"k": 2.5}})
    assert state_store.update_if("p", "s", {"x": 1}, {"n": True}) is False  # a bool is not a number
    assert state_store.update_if("p", "s", {"x": 1}, {"b": 1}) is False
    assert state_store.update_if("p", "s", {"x": 1}, {"n": "1"}) is False
    assert state_store.update_if("p", "s", {"x": 2}, {"n": 1.0, "b": True, "f": 0.1}) is True  # numbers by value
    assert state_store.update_if("p", "s", {"x": 3}, {"l": [1, "a"], "m": {"k": 2.5}}) is True
    assert state_store.update_if("p", "s", {"x": 4}, {"l": [1]}) is False
    assert (state_store.get("p", "s") or {})["x"] == 3


def test_attribute_names_need_no_care(state_store: StateStore) -> None:
    # DynamoDB reserved words, dots and spaces: all plain names here.
    state_store.put("p", "s", {"status": "a", "size": 1, "a.b": "dot", "with space": 1})
    assert state_store.update_if("p", "s", {"status": "b", "a.b": "dot2"}, {"size": 1, "a.b": "dot"}) is True
    assert state_store.get("p", "s") == {"pk": "p", "sk": "s", "status": "b", "size": 1, "a.b": "dot2",
                                         "with space": 1}


def test_update_if_refuses_key_changes_and_empty_changes(state_store: StateStore) -> None:
    with pytest.raises(ConfigurationError):
        state_store.update_if("p", "s", {"sk": "t"}, {})
    with pytest.raises(ConfigurationError):
        state_store.update_if("p", "s", {}, {})


def test_query_sorted_by_sk_with_prefix(state_store: StateStore) -> None:
    for sk in ["turbine#T10", "turbine#T02", "job#b", "turbine#T01", "job#a", "zz", "Turbine#upper"]:
        state_store.put("group", sk, {"n": sk})
    state_store.put("other-group", "turbine#T00", {"n": 0})
    state_store.put("group-2", "turbine#T00", {"n": 0})

    assert [i["sk"] for i in state_store.query("group", "turbine#")] == ["turbine#T01", "turbine#T02", "turbine#T10"]
    assert [i["sk"] for i in state_store.query("group")] == [
        "Turbine#upper", "job#a", "job#b", "turbine#T01", "turbine#T02", "turbine#T10", "zz"]
    assert state_store.query("group", "turbine#T1") == [{"pk": "group", "sk": "turbine#T10", "n": "turbine#T10"}]
    assert state_store.query("group", "nothing") == []
    assert state_store.query("nobody") == []


def test_delete_removes_one_item_and_says_whether_it_was_there(state_store: StateStore) -> None:
    state_store.put("open", "episode:a", {"n": 1})
    state_store.put("open", "episode:b", {"n": 2})
    assert state_store.delete("open", "episode:a") is True
    assert state_store.delete("open", "episode:a") is False  # a redelivered delete changes nothing
    assert state_store.get("open", "episode:a") is None
    assert [i["sk"] for i in state_store.query("open")] == ["episode:b"]
    assert state_store.delete("nobody", "nothing") is False
    assert state_store.put("open", "episode:a", {"n": 3}, if_absent=True)  # the key is free again


def test_query_prefix_is_literal(state_store: StateStore) -> None:
    for sk in ["a%b", "a_b", "axb", "ä"]:
        state_store.put("p", sk, {})
    assert [i["sk"] for i in state_store.query("p", "a%")] == ["a%b"]
    assert [i["sk"] for i in state_store.query("p", "a_")] == ["a_b"]
    assert [i["sk"] for i in state_store.query("p", "ä")] == ["ä"]


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), {1, 2}, b"bytes", {"k": {1: "int key"}}, object()],
                         ids=["nan", "inf", "set", "bytes", "int-key", "object"])
def test_non_json_values_are_refused(state_store: StateStore, bad: Any) -> None:
    with pytest.raises(ConfigurationError):
        state_store.put("p", "s", {"v": bad})
    with pytest.raises(ConfigurationError):
        state_store.update_if("p", "s", {"v": bad}, {})
    assert state_store.get("p", "s") is None


# --- local only: the conditional write is atomic across threads and processes ------------------------------------

def _increment(store: StateStore, times: int) -> None:
    """Compare-and-set loop: read, then write only if nobody wrote in between."""
    done = 0
    while done < times:
        current = (store.get("counter", "c") or {}).get("n", 0)
        if store.update_if("counter", "c", {"n": current + 1}, {"n": current if current else None}):
            done += 1


def test_compare_and_set_across_threads(tmp_path: Path) -> None:
    store = SqliteStateStore(tmp_path / "state.db")
    threads = [threading.Thread(target=_increment, args=(store, 25)) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert store.get("counter", "c") == {"pk": "counter", "sk": "c", "n": 150}


def test_compare_and_set_across_processes(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    SqliteStateStore(db)
    script = ("import sys; from pathlib import Path; from nacelle.local.adapters.state import SqliteStateStore; "
              "from tests.contract.test_state_store import _increment; "
              "_increment(SqliteStateStore(Path(sys.argv[1])), 30)")
    root = Path(__file__).resolve().parents[2]
    procs = [subprocess.Popen([sys.executable, "-c", script, str(db)], cwd=root) for _ in range(4)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0, 0, 0]
    assert SqliteStateStore(db).get("counter", "c") == {"pk": "counter", "sk": "c", "n": 120}


def test_put_if_absent_has_one_winner_across_threads(tmp_path: Path) -> None:
    store = SqliteStateStore(tmp_path / "state.db")
    results: list[bool] = []
    barrier = threading.Barrier(8)

    def race(i: int) -> None:
        barrier.wait()
        results.append(store.put("p", "s", {"writer": i}, if_absent=True))

    threads = [threading.Thread(target=race, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [False] * 7 + [True]
