"""The bench scripts' own helpers still match the code they measure (they import from it by
path and module name, so a move elsewhere breaks them only when they run)."""

import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


def load(name: str):
    sys.path.insert(0, str(BENCH))  # as when run as a script: bench/ modules import each other
    try:
        spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # its dataclasses look themselves up there
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(BENCH))


def test_the_pickle_audit_reads_our_transport_and_finds_no_unpickling():
    pytest.importorskip("lerobot")
    audit = load("incumbents").pickle_audit()
    assert audit["rtvla_unpickles_network_bytes"] is False


def test_the_throughput_bench_builds_its_policies():
    throughput = load("throughput")
    policy = throughput.make_policy("synthetic", None, 3)
    assert policy.num_steps == 3 and policy.info.chunk_length > 0
