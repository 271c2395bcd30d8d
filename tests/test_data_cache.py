"""FrameCache: built once, loaded later, atomic writes, stale and corrupt entries rebuilt,
bad sources reported (or raised with strict), entries readable by a shared folder's users."""

import os
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest

from stbp.data import FormatError, FrameCache, events_to_frames, read_nmnist
from stbp.data import cache as cache_module
from stbp.data.cache import check_recordings, frame_params

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
    report = cache.build(sources, workers=2, progress=False)
    assert report.converted == 3 and not report.refused
    assert cache.build(sources, workers=2, progress=False).converted == 0
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


def break_sources(sources):
    sources[1].write_bytes(b"\x01\x02\x03")  # truncated record
    sources[2].write_bytes(bytes([0, 240, 0, 0, 0]))  # only a timestamp-overflow marker


@pytest.mark.parametrize("workers", [1, 2])
def test_bad_sources_are_reported_with_their_reason_and_get_no_entry(tmp_path, sources, workers):
    break_sources(sources)
    cache = make_cache(tmp_path)
    report = cache.build(sources, workers=workers, progress=False)
    assert report.converted == 1 and list(report.refused) == [str(p) for p in sources[1:]]
    truncated, empty = report.refused.values()
    assert isinstance(truncated, FormatError) and "truncated record" in str(truncated)
    assert str(empty).startswith(f"{sources[2]}: at byte 5: the file ends without a single event")
    assert cache.entry(sources[0]).exists() and not cache.entry(sources[1]).exists()


@pytest.mark.parametrize("workers", [1, 2])
def test_strict_build_raises_the_first_bad_source_from_a_worker(tmp_path, sources, workers):
    break_sources(sources)
    with pytest.raises(FormatError, match=f"{sources[1]}: at byte 0: truncated record"):
        make_cache(tmp_path).build(sources, workers=workers, progress=False, strict=True)


def test_check_pass_reports_without_writing(tmp_path, sources):
    break_sources(sources)
    params = frame_params((34, 34), 4, "number")
    report = check_recordings(read_nmnist, sources, params, workers=1, progress=False)
    assert report.converted == 0 and list(report.refused) == [str(p) for p in sources[1:]]
    assert not (tmp_path / "cache").exists()


def test_unreadable_source_is_reported_not_raised(tmp_path, sources):
    missing = tmp_path / "data" / "gone.bin"
    report = make_cache(tmp_path).build([sources[0], missing], workers=1, progress=False)
    assert isinstance(report.refused[str(missing)], FileNotFoundError)


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o002, 0o664)])
def test_entries_get_the_normal_file_mode(tmp_path, sources, umask, mode):
    old = os.umask(umask)
    try:
        cache = make_cache(tmp_path)
        cache.build(sources[:1], workers=1, progress=False)
    finally:
        os.umask(old)
    assert stat.S_IMODE(cache.entry(sources[0]).stat().st_mode) == mode


def test_cache_folder_and_sources_expand_the_home_folder(tmp_path, sources, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    cache = FrameCache("~/cache", read_nmnist, (34, 34), T=4, split="number")
    assert cache.folder.parent == tmp_path / "cache"
    assert cache.build(["~/data/0.bin"], workers=1, progress=False).converted == 1
    assert cache.entry("~/data/0.bin") == cache.entry(sources[0])
    assert cache.entry(sources[0]).exists()


def no_events(path):
    return read_nmnist(path)[:0]


def test_a_reader_that_finds_no_events_is_refused_generically(tmp_path, sources):
    cache = FrameCache(tmp_path / "cache", no_events, (34, 34), T=4)
    report = cache.build(sources[:1], workers=1, progress=False)
    size = sources[0].stat().st_size
    assert str(report.refused[str(sources[0])]) == (
        f"{sources[0]}: at byte {size}: the file ends without a single event"
    )
    with pytest.raises(FormatError, match="without a single event"):
        cache.load(sources[0])


def test_bad_framing_settings_are_refused_up_front(tmp_path):
    with pytest.raises(ValueError, match="split must be one of 'time', 'number', got 'space'"):
        FrameCache(tmp_path, read_nmnist, (34, 34), T=4, split="space")
    with pytest.raises(ValueError, match="T .* at least 1, got 0"):
        FrameCache(tmp_path, read_nmnist, (34, 34), T=0)
