"""The phantoms' appearance: tissue intensities, partial volume, background clutter, bias, noise.

See ``phantom`` (Intensities) for what is modelled and the rng tags it draws from.
"""

from __future__ import annotations

import torch

from .. import rng
from .phantom_fields import col, keyed_field, random_field, row_quantiles, structure_scale, upsample
from .phantom_shapes import FAMILIES


def ramp(x: torch.Tensor) -> torch.Tensor:
    """Clamp to [0, 1] in place: a linear ramp once the argument is measured in ramp widths."""
    return x.clamp_(0.0, 1.0)


def render(keys, shape, fam, is_ct, out_w, cav_w, u):
    """Image (B, D, H, W) float32 in [0, 1].

    fam (B,) index into FAMILIES; is_ct (B,) bool; out_w (B, D, H, W) = 1 - soft foreground
    occupancy (overwritten: it becomes the image); cav_w (B_inner, D, H, W) = 1 - soft occupancy
    of the inner tissue (hollow: the fluid cavity; folded: the white matter) of the hollow and
    folded rows (in batch order), or None when there are none; u (B, 24)
    float64 the rows' appearance parameters (``rng.params(keys, 150, 24)``).

    Mixing is written ``v + (x - v) * (1 - m)`` so every step runs in place: fresh full-size
    tensors cost page faults on CPU, more than the arithmetic.
    """
    B = keys.shape[0]
    L = structure_scale(shape)
    u = u.unbind(1)
    vessel, wall = fam == FAMILIES.index("tubular"), fam == FAMILIES.index("hollow")
    folded = fam == FAMILIES.index("folded")

    def pick(ct, mr):
        return torch.where(is_ct, ct, mr)

    # --- tissue values, per episode: CT in HU, MR in a.u.
    a_ct, a_mr = 35 + 30 * u[0], 0.30 + 0.15 * u[0]  # main background tissue
    tA = pick(a_ct, a_mr)
    # second background tissue: CT fat; MR fat (bright, T1-like) or dark fibrous tissue
    tB = pick(-110 + 50 * u[1], torch.where(u[2] < 0.6, 0.80 + 0.2 * u[1], 0.10 + 0.1 * u[1]))
    # organs: mostly enhancing (brighter), sometimes hypodense in CT
    organ = pick(a_ct + torch.where(u[2] < 0.8, 25 + 70 * u[3], -(20 + 30 * u[3])),
                 a_mr + 0.10 + 0.25 * u[3])
    vess = pick(140 + 160 * u[3], a_mr + 0.30 + 0.40 * u[3])
    wallv = pick(a_ct + 20 + 50 * u[3], a_mr + 0.10 + 0.20 * u[3])
    fg = torch.where(vessel, vess, torch.where(wall, wallv, organ))
    fluid = pick(20 * u[4], torch.where(u[5] < 0.5, 0.9 + 0.3 * u[4], 0.05 + 0.1 * u[4]))
    # folded: the "white matter" inside the ribbon, a neighbour tissue close to the foreground
    # (MR: brighter, T1-like, in 70 % of the episodes, else darker; CT: a little darker), so
    # one threshold takes either both tissues or neither
    wm = pick(fg - (8 + 17 * u[19]), fg + torch.where(u[20] < 0.7, 0.08 + 0.12 * u[19], -(0.08 + 0.08 * u[19])))
    inner = torch.where(wall, fluid, wm)  # the inner tissue of the rows that have one
    # distractor organs look almost like the foreground: intensity alone can't separate them
    distr = fg + pick((u[6] - 0.5) * 30, (u[6] - 0.5) * 0.10)
    clutter = pick(350 + 650 * u[7], torch.where(u[8] < 0.5, 0.02 + 0.06 * u[7], 0.9 + 0.2 * u[7]))
    tex_amp = pick(6 + 9 * u[10], 0.02 + 0.03 * u[10])

    # --- background masks: ramps of thresholded random fields, ~1.5 voxels wide. The ramp
    # argument (N - thr) * sigma / 1.8 is affine in N (|grad N| ~ 1.22 / sigma), so it is formed
    # on the coarse grid; it is negated there to give 1 - mask, the weight of what lies below.
    s_part, s_dis, s_clu, s_ves = 0.2 * L, 0.12 * L, max(4.0, 0.08 * L), 0.25 * L
    thr_b = 1.0 * u[11]
    thr_d = 0.8 + 0.8 * u[12]
    thr_c = pick(1.6 + 0.8 * u[13], 1.9 + 0.8 * u[13])

    def col5(v):  # (B,) -> (B, 1, 1, 1) float64, for coarse fields
        return v[:, None, None, None]

    def field_seeds(k, sub):  # the background fields' generator seeds: substream ``sub`` of tag 151
        return rng.normal_seeds(rng.substream(rng.substream(k, sub), 151))

    def ramp_field(seeds, sigma, thr, sign):
        f, st = random_field(seeds, shape, 1, sigma)
        arg = 0.5 + sign * (f[:, 0] - col5(thr)) * (sigma / 1.8)
        return upsample(arg[:, None].float(), shape, st)[:, 0].clamp_(0, 1)

    def vessel_field(seeds, rad):  # 1 - mask of other vessels, where two fields are both ~0
        f, st = random_field(seeds, shape, 2, s_ves)
        fv = upsample((f * (s_ves / 1.22 / 1.5)).float(), shape, st)  # ~ distance / ramp width
        return fv[:, 0].mul_(fv[:, 0]).add_(fv[:, 1].mul_(fv[:, 1])).sqrt_().add_(col(1 - rad)).clamp_(0, 1)

    img = ramp_field(field_seeds(keys, 0), s_part, thr_b, 1.0).mul_(col(tB - tA)).add_(col(tA))
    rad = 0.5 + (0.7 + 1.0 * u[18]) * L / 32 / 1.5  # distractor vessel radius in ramp widths
    if not vessel.any():
        keep = ramp_field(field_seeds(keys, 1), s_dis, thr_d, -1.0)
    elif vessel.all():
        keep = vessel_field(field_seeds(keys, 3), rad)
    else:
        org_rows, ves_rows = (~vessel).nonzero()[:, 0], vessel.nonzero()[:, 0]
        seeds = field_seeds(keys, torch.where(vessel, 3, 1))  # each row its own substream, one chain
        keep = torch.empty_like(img)
        keep[org_rows] = ramp_field(seeds[org_rows], s_dis, thr_d[org_rows], -1.0)
        keep[ves_rows] = vessel_field(seeds[ves_rows], rad[ves_rows])
    img.sub_(col(distr)).mul_(keep).add_(col(distr))
    del keep
    img.sub_(col(clutter)).mul_(ramp_field(field_seeds(keys, 2), s_clu, thr_c, -1.0)).add_(col(clutter))
    img = out_w.mul_(img.sub_(col(fg))).add_(col(fg))
    if cav_w is not None:  # only on the hollow / folded rows: (x - v) * 1 + v is not exactly x
        rows = (wall | folded).nonzero()[:, 0]
        if len(rows) == B:
            img.sub_(col(inner)).mul_(cav_w).add_(col(inner))
        else:
            img[rows] = img[rows].sub_(col(inner[rows])).mul_(cav_w).add_(col(inner[rows]))
    ft, st = keyed_field(keys, 153, shape, 1, 3.0)
    img += upsample((ft * col5(tex_amp)[:, None]).float(), shape, st)[:, 0]

    # --- bias field: CT acts on attenuation (HU + 1000), tiny; MR multiplicative, strong.
    # x * U + V, both formed on the coarse grid (V = 0 for MR).
    fb, sb = keyed_field(keys, 152, shape, 1, 0.5 * L)
    beta = col5(pick(0.005 + 0.01 * u[14], 0.12 + 0.2 * u[14]))[:, None]
    ct5 = col5(is_ct)[:, None]
    bias = upsample(torch.cat([torch.where(ct5, 1 + beta * fb, (1 + beta * fb).clamp(min=0.4)),
                                torch.where(ct5, 1000 * beta * fb, torch.zeros_like(fb))], 1).float(), shape, sb)
    img.mul_(bias[:, 0]).add_(bias[:, 1])
    del bias

    # --- acquisition noise: CT Gaussian (HU); MR Rician |s + n_re + i n_im|, the imaginary
    # part reusing the (white) noise mirrored along W: independent voxelwise, ~4x cheaper
    nz = rng.normal(rng.substream(keys, 154), shape).mul_(col(pick(6 + 14 * u[9], 0.025 + 0.035 * u[9])))
    img += nz
    if not is_ct.all():  # the magnitude of the MR rows only (a row's values are its own)
        mr = None if not is_ct.any() else (~is_ct).nonzero()[:, 0]
        re, im = (img, nz.flip(-1)) if mr is None else (img[mr], nz[mr].flip(-1))
        mag = (re * re).add_(im.mul_(im)).sqrt_()
        if mr is None:
            img = mag
        else:
            img[mr] = mag
        del re, im, mag
    del nz

    # --- to [0, 1]: CT soft-tissue window; MR 1st-99.5th percentile of the row
    q = row_quantiles(img, (0.01, 0.995))
    lvl, win = 40 + 20 * u[16], 350 + 100 * u[17]
    lo = pick(lvl - win / 2, q[0].double())
    span = pick(win, (q[1] - q[0]).double().clamp(min=1e-6))
    return img.sub_(col(lo)).div_(col(span)).clamp_(0.0, 1.0)

