"""FrameCache: built once, loaded later, atomic writes, stale and corrupt entries rebuilt."""

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from stbp.data import FrameCache, events_to_frames, read_nmnist
from stbp.data import cache as cache_module

SAMPLE = Path(__file__).parent / "data" / "nmnist_03263.bin"


@pytest.fixture
def sources(tmp_path):
    paths = []
    for i in range(3):
        path = tmp_path / "data" / f"{i}.bin"
        path.parent.mkdir(exist_ok=True)
        shutil.copy(SAMPLE, path)
        paths.append(path)
    return paths


def make_cache(tmp_path, T=4):
    return FrameCache(tmp_path / "cache", read_nmnist, (34, 34), T=T, split="number")


def test_build_once_then_load_matches_direct_framing(tmp_path, sources):
    cache = make_cache(tmp_path)
    assert cache.build(sources, workers=2, progress=False) == 3
    assert cache.build(sources, workers=2, progress=False) == 0
    direct = events_to_frames(read_nmnist(SAMPLE), 4, (34, 34), split="number")
    for path in sources:
        assert cache.entry(path).exists()
        np.testing.assert_array_equal(cache.load(path), direct)


def test_entries_are_keyed_by_parameters(tmp_path, sources):
    a, b = make_cache(tmp_path, T=4), make_cache(tmp_path, T=8)
    a.build(sources[:1], workers=1)
    assert a.entry(sources[0]) != b.entry(sources[0]) and not b.entry(sources[0]).exists()
    assert b.load(sources[0]).shape == (8, 2, 34, 34)


def test_interrupted_write_leaves_no_entry_and_no_temp_file(tmp_path, sources, monkeypatch):
    def crash(file, **arrays):
        file.write(b"PK\x03\x04 half an entry")
        raise KeyboardInterrupt

    monkeypatch.setattr(cache_module.np, "savez_compressed", crash)
    cache = make_cache(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        cache.build(sources[:1], workers=1)
    assert not cache.entry(sources[0]).exists()
    assert list(cache.folder.iterdir()) == []


def test_corrupt_entry_is_rebuilt(tmp_path, sources):
    cache = make_cache(tmp_path)
    cache.build(sources[:1], workers=1)
    entry = cache.entry(sources[0])
    expected = cache.load(sources[0])
    entry.write_bytes(entry.read_bytes()[:50])
    np.testing.assert_array_equal(cache.load(sources[0]), expected)
    assert cache._read_entry(sources[0]) is not None


def test_stale_entry_is_rebuilt_when_the_source_changes(tmp_path, sources):
    cache = make_cache(tmp_path)
    cache.build(sources[:1], workers=1)
    sources[0].write_bytes(SAMPLE.read_bytes()[:500])  # 100 events now
    stat = os.stat(sources[0])
    os.utime(sources[0], ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert cache.load(sources[0]).sum() == 100


def test_bad_source_fails_the_build_with_its_name(tmp_path, sources):
    sources[1].write_bytes(b"\x01\x02\x03")
    with pytest.raises(ValueError, match=f"{sources[1].name}.*truncated"):
        make_cache(tmp_path).build(sources, workers=2, progress=False)
