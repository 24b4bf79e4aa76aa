"""The run's PNG plots: written, valid PNGs, also with no data; and the latency windows
they draw."""

from __future__ import annotations

import pytest

from autoscale.sim.plots import PLOT_FILES, latency_windows, write_plots
from tests.autoscale.sim.test_summary import RECORDS, SAMPLES

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _assert_pngs(paths, out_dir):
    assert [p.name for p in paths] == list(PLOT_FILES)
    for path in paths:
        assert path.parent == out_dir
        data = path.read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 1000, path


def test_plots_are_written_as_png(tmp_path):
    out = tmp_path / "plots"
    _assert_pngs(write_plots(out, RECORDS, SAMPLES, slo_ttft_s=1.5, slo_tpot_s=0.2), out)


def test_plots_without_data(tmp_path):
    _assert_pngs(write_plots(tmp_path, [], []), tmp_path)


def test_latency_windows_by_arrival():
    windows = latency_windows(RECORDS, window_s=2.0)
    assert [w["start_s"] for w in windows] == [0.0, 2.0, 4.0]
    # [0, 2): requests 0 and 1 (TTFT 0.5, 1.0; TPOT 0.1, 0.3)
    assert windows[0]["ttft_p50_s"] == pytest.approx(0.75)
    assert windows[0]["tpot_p95_s"] == pytest.approx(0.1 + 0.95 * 0.2)
    # [2, 4): requests 2 (one token: no TPOT) and 3
    assert windows[1]["tpot_p50_s"] == pytest.approx(0.1)
    # [4, 6): request 4 was rejected, request 5 lost after its first token
    assert windows[2]["ttft_p50_s"] == pytest.approx(0.5)
    assert windows[2]["tpot_p50_s"] is None
    assert latency_windows([]) == []
    with pytest.raises(ValueError, match="window_s must be a number > 0"):
        latency_windows(RECORDS, window_s=0.0)
