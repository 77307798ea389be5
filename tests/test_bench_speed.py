"""bench/speed.py's stage attribution, on a made-up application log (no application run)."""

from bench.memory import RunTrace, Sample
from bench.speed import STAGES, stage_times


def _trace(lines: list[tuple[float, float, str]], wall_s: float, cpu_s: float) -> RunTrace:
    trace = RunTrace(wall_s=wall_s, cpu_s=cpu_s)
    trace.lines = [(t, text) for t, _, text in lines]
    trace.line_cpu_s = [cpu for _, cpu, _ in lines]
    trace.samples = [Sample(t / 2, 1000 * t) for t in range(0, 2 * int(wall_s) + 1)]
    return trace


def test_each_stage_ends_at_its_log_line_and_a_missing_stage_merges_into_the_next():
    log = [
        (1.0, 0.5, "[info] [gxf_executor.cpp:2921] Running Graph..."),
        (2.0, 1.5, "(operators.dicom_loader_operator) - loaded 48 instance(s) in 1 series of 1 study(ies) from /in"),
        (3.0, 2.0, "series 1.2 (CT #3): 48x256x256 voxels, spacing 1x0.7x0.7 mm"),
        (3.5, 2.4, "NS-N2N: volume 48x256x256 CT, spacing 1 x 0.7 x 0.7 mm, device cpu, torch threads 2"),
        (5.0, 4.0, "weight maps: 47 pairs, 98.3% of pixels matched, 1.5 s"),
        (5.5, 4.5, "noise before: 25.16 (paired-slice difference in matched regions (MAD / sqrt 2))"),
        (9.0, 10.0, "train: step 4/4 (100%) loss 0.003"),
        (10.0, 12.0, "train: done, 4 steps in 0:00:04, final loss 0.003136, stopped by max_steps"),
        (12.0, 15.0, "inference: step 16/48 (33%) elapsed 0:00:02"),
        (16.0, 21.0, "inference: step 48/48 (100%) elapsed 0:00:06 ETA 0:00:00"),
        (17.0, 22.0, "noise after: 24.66 (2% lower); timings ..."),
        # no "model saved": that stage is merged into the write
        (19.0, 23.0, "series 1.2: derived series 2.25.1 written: 48 instances in /out"),
        (20.0, 24.0, "series 1.2: QA report written (PDF ...)"),
    ]
    stages = {s.name: s for s in stage_times(_trace(log, wall_s=22.0, cpu_s=25.0))}
    assert list(stages) == [name for name, _ in STAGES if name != "save model"]
    assert stages["training"].wall_s == 4.5 and stages["training"].cpu_s == 7.5
    assert stages["inference (network)"].wall_s == 6.0  # ends at 48/48, not at the 16/48 line
    assert stages["DICOM write (derived series)"].wall_s == 2.0  # from "noise after", absorbing the model save
    assert stages["run record + shut-down"].wall_s == 2.0 and stages["run record + shut-down"].cpu_s == 1.0
    assert stages["training"].peak_rss_kib == 20_000  # samples grow 2000 KiB a second: the one at 10 s
