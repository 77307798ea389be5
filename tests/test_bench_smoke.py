"""Seconds-long CPU checks of the benchmark's metrics and noise simulation (no downloads)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from bench import baselines, noise
from bench.cases import CASES, SEEDS, thick_slices
from bench.data import body_mask_ct, mni_to_ct
from bench.metrics import (
    ct_metrics,
    edge_band,
    mr_metrics,
    psnr,
    removed_edge_correlation,
    score,
    ssim_2d_mean,
    to_unit,
)
from bench.quality import _fmt, format_table, parse_args, plan_rows


def _phantom(n: int = 64, slices: int = 4) -> np.ndarray:
    """Water disc (0 HU) with a bone ellipse (1000 HU) and a fat blob (−100 HU) in air (−1000 HU)."""
    yy, xx = np.mgrid[:n, :n] - (n - 1) / 2.0
    img = np.full((n, n), -1000.0, np.float32)
    img[yy**2 + xx**2 <= (0.42 * n) ** 2] = 0.0
    img[(yy / (0.12 * n)) ** 2 + ((xx - 0.15 * n) / (0.06 * n)) ** 2 <= 1] = 1000.0
    img[(yy + 0.2 * n) ** 2 + xx**2 <= (0.08 * n) ** 2] = -100.0
    return np.repeat(img[None], slices, axis=0)


# --- metrics -----------------------------------------------------------------------------------------


def test_psnr_of_a_known_offset_is_exact():
    clean = np.zeros((3, 32, 32), np.float32)
    m = ct_metrics(clean, clean + 40.95, np.ones(clean.shape, bool))  # 40.95 HU = 0.01 of [−1024, 3071]
    assert m["psnr"] == pytest.approx(40.0, abs=1e-6)
    assert m["psnr_body"] == pytest.approx(40.0, abs=1e-6)
    w = ct_metrics(clean, clean + 4.0, np.ones(clean.shape, bool))  # 4 HU = 0.01 of the 400 HU window
    assert w["psnr_w400"] == pytest.approx(40.0, abs=1e-6)
    assert w["psnr"] == pytest.approx(20 * np.log10(4095 / 4.0), abs=1e-6)


def test_data_range_is_never_inferred_from_the_dtype():
    clean = np.zeros((2, 16, 16), np.int16)
    test = clean + np.int16(41)
    body = np.ones(clean.shape, bool)
    as_int = ct_metrics(clean, test, body)["psnr"]
    as_float = ct_metrics(clean.astype(np.float32), test.astype(np.float32), body)["psnr"]
    assert as_int == pytest.approx(as_float)
    assert as_int == pytest.approx(20 * np.log10(4095 / 41.0), abs=1e-6)  # not the +24 dB of range 65535


def test_clipping_and_window_and_mask():
    clean = np.full((2, 16, 16), 3071.0)
    assert psnr(to_unit(clean, -1024, 3071), to_unit(clean + 900, -1024, 3071)) == float("inf")
    air = np.full((2, 16, 16), -1000.0)
    m = ct_metrics(air, air - 50.0, np.ones(air.shape, bool))
    assert m["psnr_w400"] == float("inf")  # both below the window's lower edge
    assert np.isfinite(m["psnr"])
    mask = np.zeros(air.shape, bool)
    mask[:, :4] = True
    test = air.copy()
    test[:, 8:] += 100.0  # error only outside the mask
    assert psnr(air, test, mask) == float("inf")


def test_ssim_wang_settings():
    rng = np.random.default_rng(0)
    clean = to_unit(_phantom(48, 2), -1024, 3071)
    assert ssim_2d_mean(clean, clean) == pytest.approx(1.0)
    noisy = clean + rng.normal(0, 0.02, clean.shape)
    assert 0.2 < ssim_2d_mean(clean, noisy) < 0.99


def test_mr_metrics_scale_with_the_reference():
    rng = np.random.default_rng(1)
    clean = rng.uniform(0, 200, (2, 24, 24))
    noisy = clean + rng.normal(0, 5, clean.shape)
    brain = np.ones(clean.shape, bool)
    a = mr_metrics(clean, noisy, brain, ref_scale=200.0)
    b = mr_metrics(2 * clean, 2 * noisy, brain, ref_scale=400.0)
    assert a["psnr"] == pytest.approx(b["psnr"])
    assert np.isnan(a["psnr_w400"])


# --- noise simulation ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sino_noise() -> dict[float, np.ndarray]:
    clean = _phantom()
    return {i0: noise.sinogram_noise(clean, 1.0, i0, seed=3) for i0 in (1e4, 2.5e3)}


def test_sinogram_noise_scales_as_inverse_sqrt_dose(sino_noise):
    body = body_mask_ct(_phantom(), erode_px=2)
    ratio = sino_noise[2.5e3][body].std() / sino_noise[1e4][body].std()
    assert 1.7 < ratio < 2.3  # 4x fewer photons -> ~2x the noise


def test_sinogram_noise_is_correlated_in_plane_and_independent_between_slices(sino_noise):
    stats = noise.noise_stats(sino_noise[1e4], body_mask_ct(_phantom(), erode_px=2))
    assert stats["lag1_inplane"] > 0.3  # Hann-filtered FBP: blotchy texture
    assert abs(stats["lag1_slice"]) < 0.1


def test_sinogram_noise_is_seeded_and_noise_only():
    clean = _phantom(32, 2)
    a = noise.sinogram_noise(clean, 1.0, 1e4, seed=5)
    assert np.array_equal(a, noise.sinogram_noise(clean, 1.0, 1e4, seed=5))
    assert not np.array_equal(a, noise.sinogram_noise(clean, 1.0, 1e4, seed=6))
    # No projection round trip on the clean image: at a huge dose the noisy image equals the clean one.
    near_clean = noise.add_sinogram_noise(clean, 1.0, 1e12, seed=5)
    assert np.abs(near_clean - clean).max() < 1.0


def test_rician_noise_background_mean():
    clean = np.zeros((1, 64, 64))
    noisy = noise.add_rician_noise(clean, 10.0, seed=0)
    assert noisy.mean() == pytest.approx(10.0 * np.sqrt(np.pi / 2), rel=0.05)  # Rayleigh mean


def test_flat_roi_sigma_and_psd_on_white_noise():
    rng = np.random.default_rng(2)
    noisy = 100.0 + rng.normal(0, 20.0, (4, 64, 64))
    mask = np.ones(noisy.shape, bool)
    assert noise.estimate_sigma_flat_roi(noisy, mask) == pytest.approx(20.0, rel=0.1)
    psd = baselines.estimate_noise_psd(noisy, "CT")  # object mask: everything above −500
    assert psd.shape == noisy.shape
    assert psd.mean() / psd.size == pytest.approx(400.0, rel=0.2)  # BM4D convention: mean = N·σ²


def test_mni_to_ct_mapping_ranges():
    t1 = np.zeros((20, 60, 60), np.float32)
    t1[5:15, 20:40, 20:40] = 200.0
    gm = np.zeros_like(t1)
    wm = np.zeros_like(t1)
    gm[5:15, 20:40, 20:40] = 1.0
    hu = mni_to_ct(t1, gm, wm)
    assert hu.min() >= -1000.5 and hu.max() <= 1000.5
    assert hu[10, 30, 30] == pytest.approx(40.0, abs=1.0)  # grey matter
    assert hu[10, 30, 18] > 500  # skull shell right outside the brain
    assert hu[10, 30, 11] == pytest.approx(30.0, abs=5.0)  # scalp (8-9 mm out)
    assert hu[10, 30, 2] == pytest.approx(-1000.0, abs=1.0)  # air


# --- report formatting ---------------------------------------------------------------------------------


def test_table_formatting_and_argument_checks():
    assert _fmt([float("nan")], 2) == "–"
    assert _fmt([1.0, 3.0], 1) == "2.0 ± 1.4"
    row = {
        "psnr": 40.0,
        "ssim": 0.9,
        "psnr_w400": float("nan"),
        "ssim_w400": float("nan"),
        "psnr_body": 39.0,
        "seconds": 1.5,
        "device": "cpu",
    }
    lines = format_table({"a": [row], "b": []}, {"b": "skipped: x"})
    assert lines[2] == "| a | 40.00 | 0.9000 | – | – | 39.00 | – | – | – | – | 1.5 | cpu |"
    assert "skipped: x" in lines[3]
    with pytest.raises(SystemExit):
        parse_args(["--cases", "nope"])
    with pytest.raises(SystemExit):
        parse_args(["--methods", "nope"])
    with pytest.raises(SystemExit):
        parse_args(["--steps", "10", "--budgets", "60"])
    args = parse_args(["--steps", "10,20", "--set", "unet_width=16", "--split", "tuning"])
    assert args.steps == [10, 20] and args.case_names == list(CASES["tuning"])
    assert parse_args(["--budgets", "60,300"]).budgets == [60.0, 300.0]


def test_plan_rows_give_learned_methods_one_row_per_budget():
    plan = plan_rows(["noisy", "nsn2n", "zsn2n"], [100], [60.0, 300.0])
    assert plan == [("noisy", None, None), ("nsn2n", None, 60.0), ("nsn2n", None, 300.0), ("zsn2n", 100, None)]


# --- cases, structure metrics, reference methods ---------------------------------------------------------


def test_tuning_and_report_sets_are_disjoint_slabs_with_different_seeds():
    assert set(SEEDS["tuning"]).isdisjoint(SEEDS["report"]) and len(SEEDS["report"]) >= 3
    assert list(CASES["tuning"]) == list(CASES["report"])
    for name, tune in CASES["tuning"].items():
        rep = CASES["report"][name]
        assert tune.source == rep.source
        for a, b in ((tune.z_range, rep.z_range), (tune.full_z_range or (0, 0), rep.full_z_range or (0, 0))):
            assert a[1] <= b[0] or b[1] <= a[0], f"{name}: tuning {a} overlaps report {b}"
    thick = [c for c in CASES["report"].values() if c.thick > 1]
    assert {c.source for c in thick} >= {"totalseg-ct", "mni"}
    assert all(4.0 <= c.thick * (1.5 if c.source == "totalseg-ct" else 1.0) <= 7.0 for c in thick)


def test_thick_slices_average_groups_and_drop_the_remainder():
    vol = np.arange(7, dtype=np.float32)[:, None, None] * np.ones((7, 2, 2), np.float32)
    out = thick_slices(vol, 3)
    assert out.shape == (2, 2, 2)
    assert out[:, 0, 0].tolist() == [1.0, 4.0]
    assert thick_slices(vol, 1) is vol


def test_structure_metrics_known_answers():
    clean = to_unit(_phantom(64, 3), -160, 240)
    mask = np.ones(clean.shape, bool)
    band = edge_band(clean, mask)
    assert 0.05 < band.mean() < 0.5
    offset = clean + 0.01
    assert psnr(clean, offset, band) == pytest.approx(40.0, abs=1e-6)
    rng = np.random.default_rng(0)
    noisy = clean + rng.normal(0, 0.05, clean.shape)
    assert abs(removed_edge_correlation(clean, noisy, clean, mask)) < 0.1  # removed = pure noise
    blurred = ndimage.gaussian_filter(noisy, (0, 2, 2))
    assert removed_edge_correlation(clean, noisy, blurred, mask) > 0.3  # removed = noise + edges
    s = score("CT", _phantom(64, 3), _phantom(64, 3) + 20 * rng.standard_normal((3, 64, 64)), _phantom(64, 3), mask)
    assert s["psnr_edge"] == float("inf") and s["ssim_edge"] == pytest.approx(1.0)
    assert {"removed_edge_corr", "removed_structure_index", "psnr_body", "ssim_w400"} <= set(s)


def test_reference_methods():
    rng = np.random.default_rng(5)
    flat = np.full((5, 16, 16), 10.0) + rng.normal(0, 1.0, (5, 16, 16))
    mean3 = baselines.through_slice_mean(flat, 3)
    assert mean3[1:-1].std() < 0.7 * flat.std()  # three independent slices averaged
    assert mean3[2] == pytest.approx(flat[1:4].mean(axis=0), abs=1e-5)
    assert baselines.gaussian_smooth(flat, 2.0).std() < 0.3 * flat.std()


def test_clip_sweep_no_clip_really_switches_the_clip_off():
    from bench.clip_sweep import RULES, no_clip_config

    cfg = no_clip_config(7, "cpu")
    assert cfg.residual_clip_k is None and cfg.residual_clip_unmatched_k is None and cfg.max_steps == 7
    assert (None, None) in RULES


def test_merge_tables_puts_rows_of_separate_runs_into_one_table_per_volume(tmp_path):
    from bench.merge_tables import merge, parse
    from bench.quality import METHODS, footer

    def output(command: str, rows: dict[str, str]) -> str:
        table = "\n".join(f"| {label} | {value} | cpu |" for label, value in rows.items())
        return (
            f"## NS-N2N quality benchmark\n\n- command: `{command}`\n\n### v1: volume one\n\n- data: d1\n\n"
            f"| method | PSNR | device |\n|---|---|---|\n{table}\n\n" + "\n".join(footer()) + "\n"
        )

    gpu = tmp_path / "main.md"
    gpu.write_text(output("gpu run", {METHODS["oracle"]: "44", METHODS["noisy"]: "38", METHODS["nsn2n"]: "43"}))
    cpu = tmp_path / "cpu.md"
    cpu.write_text(output("cpu run", {METHODS["nlm3d"]: "42", METHODS["noisy"]: "99"}))
    lines = merge([parse(gpu), parse(cpu)])
    rows = [line for line in lines if line.startswith("| ") and not line.startswith("| method")]
    assert [r.split("|")[1].strip() for r in rows] == [
        METHODS["noisy"],
        METHODS["nsn2n"],
        METHODS["nlm3d"],
        METHODS["oracle"],
    ]
    assert f"| {METHODS['noisy']} | 38 | cpu |" in rows  # the first run given wins a duplicate row
    assert "- command: `gpu run`" in lines and "- command: `cpu run`" in lines
    assert sum(line.startswith("### v1") for line in lines) == 1 and "- data: d1" in lines


def test_noise_truth_reduction_and_estimator_plugins():
    from bench.metrics import reduction, true_noise_figures
    from bench.noise_truth import ESTIMATORS, resolve_estimator

    clean = np.zeros((2, 8, 8))
    noise_field = np.where(np.indices(clean.shape).sum(0) % 2 == 0, 3.0, -3.0)
    before, after = true_noise_figures(clean, clean + noise_field, clean + noise_field / 3, np.ones(clean.shape, bool))
    assert before == pytest.approx(3.0) and after == pytest.approx(1.0)
    assert reduction(before, after) == pytest.approx(2 / 3)
    assert resolve_estimator("paired-slice") is ESTIMATORS["paired-slice"]
    assert resolve_estimator("bench.noise_truth:flat_roi_estimator") is ESTIMATORS["flat-roi"]
    with pytest.raises(KeyError):
        resolve_estimator("nope")


def test_reported_noise_rows_compare_with_the_truth_and_survive_a_missing_after():
    from types import SimpleNamespace

    from bench.methods import Outcome
    from bench.quality import reported_noise_row

    clean = np.zeros((2, 8, 8))
    noise_field = np.where(np.indices(clean.shape).sum(0) % 2 == 0, 3.0, -3.0)
    vol = SimpleNamespace(clean=clean, mask=np.ones(clean.shape, bool))
    denoised = clean + noise_field / 3  # true reduction 2/3
    rows = reported_noise_row(clean + noise_field, Outcome(denoised, 1.0, "cpu", "", (3.0, 1.5)), vol)
    row = rows["evaluation mask"]
    assert row["true_reduction"] == pytest.approx(100 * 2 / 3) and row["reduction"] == pytest.approx(50.0)
    assert row["relative_error"] == pytest.approx(100 * (0.5 - 2 / 3) / (2 / 3))
    # Over the pixels the figures describe: here a half where the denoiser removed nothing.
    described = np.zeros(clean.shape, bool)
    described[:, :, :4] = True
    untouched = np.where(described, clean + noise_field, denoised)
    rows = reported_noise_row(clean + noise_field, Outcome(untouched, 1.0, "cpu", "", (3.0, 1.5)), vol, described)
    assert rows["pixels it describes"]["true_reduction"] == pytest.approx(0.0, abs=1e-9)
    assert rows["evaluation mask"]["true_reduction"] > 10.0
    # A run whose "after" was not usable (reported as None) leaves NaN in its cells, not a crash.
    row = reported_noise_row(clean + noise_field, Outcome(denoised, 1.0, "cpu", "", (3.0, None)), vol)[
        "evaluation mask"
    ]
    assert np.isnan(row["after"]) and np.isnan(row["reduction"]) and np.isnan(row["relative_error"])
    assert row["true_after"] == pytest.approx(1.0)


def test_edges_removed_control_keeps_the_noise_and_removes_the_high_pass():
    from bench.residual_flag import edges_removed

    clean = _phantom(32, 2)
    noisy = clean + np.random.default_rng(0).normal(0, 10, clean.shape)
    out = edges_removed(noisy, clean)
    assert np.allclose(noisy - out, clean - ndimage.gaussian_filter(clean, (0, 2, 2)), atol=1e-2)


def test_tuning_probe_variants_parse_into_config_overrides():
    import argparse

    from bench.tuning_probe import parse_variant

    assert parse_variant("default") == {}
    assert parse_variant("recorruption_sigma_scale=0.9, formulation=paper") == {
        "recorruption_sigma_scale": "0.9",
        "formulation": "paper",
    }
    with pytest.raises(argparse.ArgumentTypeError, match="KEY=VALUE"):
        parse_variant("formulation")


def test_a_precleaned_reference_keeps_the_anatomy_and_loses_its_own_noise():
    from bench import cases
    from bench.data import Volume

    rng = np.random.default_rng(0)
    clean = np.repeat(_phantom(96, 1), 6, axis=0) + 25.0 * rng.standard_normal((6, 96, 96)).astype(np.float32)
    ct = Volume("ct", clean, (1.0, 1.0, 1.0), "CT", body_mask_ct(clean), description="phantom")
    own = cases.reference_own_noise(ct)
    assert 15.0 < own < 35.0  # the phantom's flat water carries the 25 HU we put there
    cleaned = cases.preclean_reference(ct)
    assert cases.reference_own_noise(cleaned) < 0.4 * own
    assert np.array_equal(cleaned.mask, ct.mask) and "pre-cleaned" in cleaned.description
    water = ndimage.binary_erosion(_phantom(96, 1)[0] == 0.0, iterations=4)
    assert abs(float(cleaned.clean[:, water].mean())) < 5.0  # the anatomy's values stay where they were
    mr = Volume("mr", clean, (1.0, 1.0, 1.0), "MR", ct.mask, ref_scale=1.0, description="template")
    assert cases.preclean_reference(mr) is mr  # the MR template is noise-free already
    with pytest.raises(KeyError, match="precleaned"):
        cases.CaseStore(reference="denoised")
