"""Each loss term is zero for a perfect prediction and obeys its mask."""

import torch

from nsn2n.losses import (
    continuity_loss,
    masked_mse,
    nsn2n_loss,
    reconstruction_loss,
    regional_consistency_loss,
)


def _t(*values):
    return torch.tensor(values, dtype=torch.float32).view(1, 1, 1, -1)


def test_masked_mse_averages_over_mask_only():
    pred, target = _t(1, 2, 3, 4), _t(1, 0, 3, 0)
    mask = _t(0, 1, 0, 0) > 0
    assert masked_mse(pred, target, mask).item() == 4.0  # only the second pixel: (2-0)^2 / 1
    # an empty mask gives 0, not NaN
    assert masked_mse(pred, target, torch.zeros_like(mask)).item() == 0.0


def test_reconstruction_is_zero_for_perfect_cross_prediction_and_symmetric():
    x_a, x_b = _t(1, 2, 3), _t(1.5, 2.5, 3.5)
    w = torch.ones_like(x_a, dtype=torch.bool)
    # f(x_a) = x_b and f(x_b) = x_a is the Noise2Noise optimum for one sample
    assert reconstruction_loss(x_b, x_a, x_a, x_b, w).item() == 0.0
    # swapping the roles of the two slices gives the same value
    f_a, f_b = _t(0, 0, 0), _t(1, 1, 1)
    assert reconstruction_loss(f_a, f_b, x_a, x_b, w).item() == reconstruction_loss(f_b, f_a, x_b, x_a, w).item()


def test_reconstruction_ignores_unmatched_pixels():
    x_a, x_b = _t(0, 0), _t(0, 100)
    w = _t(1, 0) > 0
    assert reconstruction_loss(x_a, x_a, x_a, x_b, w).item() == 0.0


def test_regional_consistency_only_on_matched_pixels():
    f_a, f_b = _t(1, 5), _t(1, 0)
    assert regional_consistency_loss(f_a, f_b, _t(1, 0) > 0).item() == 0.0
    assert regional_consistency_loss(f_a, f_b, _t(0, 1) > 0).item() == 25.0


def test_continuity_zero_for_linear_outputs_and_target_detached():
    f_a = _t(1.0, 2.0).requires_grad_()
    f_b = _t(3.0, 6.0).requires_grad_()
    f_mid = _t(2.0, 4.0).requires_grad_()
    valid = torch.ones_like(f_a, dtype=torch.bool)
    assert continuity_loss(f_mid, f_a, f_b, valid).item() == 0.0
    loss = continuity_loss(f_mid + 1, f_a, f_b, valid)
    loss.backward()
    assert f_a.grad is None and f_b.grad is None  # target (mean of the outputs) is detached
    assert f_mid.grad is not None


def test_total_loss_weights():
    x_a, x_b = _t(0.0), _t(1.0)
    f_a, f_b, f_mid = _t(0.0), _t(0.0), _t(1.0)
    w = torch.ones_like(x_a, dtype=torch.bool)
    terms = nsn2n_loss(f_a, f_b, f_mid, x_a, x_b, w, w, lambda_rc=0.5, lambda_ic=2.0)
    # recon: (0-1)^2 + (0-0)^2 = 1 ; rc: 0 ; ic: (1-0)^2 = 1
    assert terms.recon == 1.0 and terms.rc == 0.0 and terms.ic == 1.0
    assert terms.total.item() == 1.0 + 0.5 * 0.0 + 2.0 * 1.0
