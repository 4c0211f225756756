# Edge-case golden files for Palm.Native's tests, in gen_golden.py's EXTRA_CASES form (the
# generator lives in ../shared/golden; it passes cfg in). Valid configs the public set does not
# reach: a 2-wide residual, rank above the width, odd widths, head width 20, eight heads of 4
# with rank 2 (ill-conditioned: float32 gradients land ~1e-4 from float64), T = 1, T past two
# AoD chunks (33, 40), four recursion steps, sequence sharing with mean mixing.
# Regenerate (byte-identical; needs Debian's python3-torch python3-numpy python3-msgpack):
#   /usr/bin/python3 ../shared/golden/gen_golden.py --cases tests/golden-edge/cases.py --set edge --out tests/golden-edge
def st(mu, ad, wd, b1, b2, s, clip):
    return dict(muon_lr=mu, adam_lr=ad, weight_decay=wd, adam_betas=[b1, b2], adam_eps=1e-8, adam_step=s, clip_factor=clip)
EXTRA_CASES = {"edge": [
    dict(name="x0_V3_C2", seed=11, B=2, T=4, ignore=0.0,
         config=cfg(3, 4, 2, 1, 4, 0, 1, 1, "cycle", 0, "sum"),
         step=st(0.02, 0.01, 0.1, 0.9, 0.95, 1, 0.0), ns_shapes=[(2, 1), (1, 2), (1, 1)]),
    dict(name="x1_rank_above_C_seq_mean", seed=12, B=3, T=6, ignore=0.2,
         config=cfg(7, 6, 5, 3, 12, 9, 2, 3, "sequence", 3, "mean"),
         step=st(0.03, 0.004, 0.05, 0.85, 0.99, 7, 0.6), ns_shapes=[(9, 5), (5, 9), (3, 3)]),
    dict(name="x2_wide_full_R4", seed=13, B=2, T=33, ignore=0.0,
         config=cfg(129, 33, 24, 5, 40, 0, 1, 4, "cycle", 36, "sum"),
         step=st(0.02, 0.01, 0.0, 0.9, 0.95, 1000, 1.5), ns_shapes=[(24, 10), (10, 24), (12, 12)]),
    dict(name="x3_hd20_long_T40", seed=14, B=1, T=40, ignore=0.5,
         config=cfg(130, 64, 24, 2, 40, 5, 3, 2, "cycle", 0, "mean"),
         step=st(0.05, 0.02, 0.2, 0.9, 0.95, 2, 0.3), ns_shapes=[(17, 5), (5, 17), (7, 7)]),
    dict(name="x4_H8_hd4_rank2", seed=15, B=5, T=20, ignore=0.1,
         config=cfg(33, 20, 16, 8, 32, 2, 4, 1, "sequence", 8, "sum"),
         step=st(0.01, 0.003, 0.1, 0.8, 0.9, 300, 2.0), ns_shapes=[(32, 2), (2, 32), (2, 2)]),
    dict(name="x5_T1", seed=16, B=2, T=1, ignore=0.0,
         config=cfg(11, 1, 8, 2, 8, 0, 1, 2, "cycle", 4, "mean"),
         step=st(0.02, 0.01, 0.1, 0.9, 0.95, 5, 0.9), ns_shapes=[(3, 2), (2, 3), (4, 4)]),
]}
