"""An independent, loop-by-loop transcription of SPEC §2-6 for one user, in float64.

It reads the released implementation's parameter names (SPEC §8) directly and shares no code with the
package, so the package's operator mapping (inclusive decays, shared temporal features, packing) is checked
against the formulas themselves. Deliberately slow: O(n^2) Python loops over (i, j).
"""
from __future__ import annotations

import math

import torch


def _ln(x, eps=1e-6):
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + eps)


def _silu(x):
    return x / (1 + torch.exp(-x))


def retention_loop(q, k, v, a):
    """q, k: (n, H, dqk), v: (n, H, dv), a: (H,) -> (n, H, dv): sum_{j<=i} d^(i-j+1) (q_i.k_j) v_j."""
    n, H, _ = q.shape
    softplus = torch.log1p(torch.exp(a))
    r = torch.exp(-torch.cumsum(softplus, 0))
    d = torch.exp(-r)
    out = torch.zeros(n, H, v.shape[-1], dtype=torch.float64)
    for i in range(n):
        for j in range(i + 1):
            for h in range(H):
                out[i, h] += d[h] ** (i - j + 1) * torch.dot(q[i, h], k[j, h]) * v[j, h]
    return out


def temporal_loop(vt, ts, t_query, periods, b):
    """vt: (n, 2Ht, w) values, ts: list of n int times, t_query: int, periods: list of Ht ints, b: (Ht,).

    o[i, m]      = sum_j gamma_m^(omega_m (t_{i+1} - t_j)) sin(theta_m(t_{i+1}) - theta_m(t_j)) vt[j, m]
    o[i, Ht + m] = same with cos, where the decay exponent sums the clamped-at-0 gaps from j to i+1.
    """
    n = len(ts)
    Ht = len(periods)
    nxt = list(ts[1:]) + [t_query]
    gamma = 1 / (1 + torch.exp(-b))
    out = torch.zeros_like(vt)
    for i in range(n):
        for j in range(i + 1):
            for m in range(Ht):
                T = periods[m]
                omega = 2 * math.pi / T
                elapsed = sum(max(nxt[r] - ts[r], 0) for r in range(j, i + 1))  # integer arithmetic
                w = gamma[m] ** (omega * elapsed)
                dtheta = omega * ((nxt[i] % T) - (ts[j] % T))
                out[i, m] += w * math.sin(dtheta) * vt[j, m]
                out[i, Ht + m] += w * math.cos(dtheta) * vt[j, Ht + m]
    return out


def positional_loop(vp, table):
    """vp: (n, D), table: (Nmax, P) -> (n, D): sum_{j<=i} (E_i . E_j / (P/2)) vp_j."""
    n = vp.shape[0]
    P = table.shape[1]
    out = torch.zeros_like(vp)
    for i in range(n):
        for j in range(i + 1):
            out[i] += torch.dot(table[i], table[j]) / (P / 2) * vp[j]
    return out


def block_one_user(params, x, ts, t_query, periods, b):
    """One block (SPEC §5) on one history ``x (n, D)`` float64: ``params`` are the block's tensors under the
    released names without the ``_fuxi._attention_layers.{i}.`` prefix (``_uvqk``, ``_retention._gamma``, ...),
    ``ts`` n int times, ``t_query`` the request time, ``periods`` Ht ints, ``b (Ht,)`` the shared temporal decay."""
    n, D = x.shape
    Ht = len(periods)
    xh = _ln(x)
    a_ret = params["_retention._gamma"]
    H = a_ret.shape[0]
    W = params["_uvqk"]
    dqk = (W.shape[1] - 4 * D) // (2 * H)
    uvqk = _silu(xh @ W)
    u = uvqk[:, : 3 * D]
    q = uvqk[:, 3 * D: 3 * D + H * dqk].reshape(n, H, dqk)
    k = uvqk[:, 3 * D + H * dqk: 3 * D + 2 * H * dqk].reshape(n, H, dqk)
    v = uvqk[:, 3 * D + 2 * H * dqk:].reshape(n, H, D // H)
    y_s = retention_loop(q, k, v, a_ret).reshape(n, D)
    vt = (xh @ params["_channel_t.proj_v.weight"].t()).reshape(n, 2 * Ht, D // (2 * Ht))
    ot = temporal_loop(vt, ts, t_query, periods, b)
    if "_channel_t.alpha" in params:  # the skip connection (aug_current, SPEC §3), off in ML-20M (SPEC §10)
        y_t = (params["_channel_t.alpha"][:, None] * ot + params["_channel_t.beta"][:, None] * vt).reshape(n, D)
    else:
        y_t = ot.reshape(n, D)
    vp = xh @ params["_channel_p._proj_p.weight"].t()
    op = positional_loop(vp, params["_channel_p._emb"])
    y_p = params["_channel_p._alpha"] * op + params["_channel_p._beta"] * vp
    a = u * torch.cat([_ln(y_s), _ln(y_t), _ln(y_p)], dim=-1)
    h = a @ params["_mffn.lin0.weight"].t() + x
    z = h / torch.sqrt((h ** 2).mean(-1, keepdim=True) + 1e-6)
    return (_silu(z @ params["_mffn.lin1.weight"].t()) * (z @ params["_mffn.lin3.weight"].t())) @ params[
        "_mffn.lin2.weight"].t() + h


def encode_one_user(sd, item_ids, ts, t_query):
    """User vectors (n, D) for one history under the released parameter names ``sd`` (float64 tensors)."""
    sd = {k: v.double() if v.is_floating_point() else v for k, v in sd.items()}
    emb = sd["_embedding_module._item_emb.weight"]
    pos = sd["_input_features_preproc._pos_emb.weight"]
    D = emb.shape[1]
    n = len(item_ids)
    x = math.sqrt(D) * emb[torch.tensor(item_ids)] + pos[:n]
    num_layers = len({k.split(".")[2] for k in sd if k.startswith("_fuxi._attention_layers.")})
    b = sd["_fuxi._attention_layers.0._channel_t._gamma"]
    periods = [int(p) for p in sd["_fuxi._attention_layers.0._channel_t._intervals"]]
    Ht = len(periods)
    b = b.expand(Ht) if b.numel() == 1 else b
    for layer in range(num_layers):
        p = f"_fuxi._attention_layers.{layer}."
        x = block_one_user({k[len(p):]: v for k, v in sd.items() if k.startswith(p)}, x, ts, t_query, periods, b)
    return x / x.norm(dim=-1, keepdim=True).clamp(min=1e-6)


def random_official_state_dict(num_items=30, D=32, H=2, dqk=8, num_layers=2, Ht=4, P=8, L=20, ffn_mult=2,
                               learn_gamma=True, periods=None, seed=0, temporal_skip=True, chunked=True):
    """A released-format state dict with random (non-initial) weights, so every parameter matters.

    ``temporal_skip=False``: no ``_channel_t.alpha``/``beta`` (the released ML-20M configuration);
    ``chunked=False``: a positional table of L + 11 rows instead of L + 11 rounded up to 128."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, std=0.3):
        return torch.randn(*shape, generator=g) * std

    periods = periods if periods is not None else [16 ** m for m in range(1, Ht + 1)]
    Nmax = -(-(L + 11) // 128) * 128 if chunked else L + 11  # the released table without chunking: L + 11
    sd = {
        "_embedding_module._item_emb.weight": rnd(num_items + 1, D),
        "_input_features_preproc._pos_emb.weight": rnd(L + 11, D),
    }
    for i in range(num_layers):
        p = f"_fuxi._attention_layers.{i}."
        sd[p + "_uvqk"] = rnd(D, 4 * D + 2 * H * dqk, std=0.2)
        sd[p + "_retention._gamma"] = rnd(H, std=1.0)
        sd[p + "_channel_t._gamma"] = rnd(Ht, std=1.0) if (learn_gamma and i == 0) else torch.zeros(1)
        sd[p + "_channel_t.proj_v.weight"] = rnd(D, D, std=0.2)
        if temporal_skip:
            sd[p + "_channel_t.alpha"] = rnd(2 * Ht, std=0.5)
            sd[p + "_channel_t.beta"] = 1 + rnd(2 * Ht, std=0.2)
        sd[p + "_channel_t._intervals"] = torch.tensor(periods, dtype=torch.int64)
        sd[p + "_channel_t._scale_factor"] = 2 * math.pi / torch.tensor(periods, dtype=torch.float64)
        sd[p + "_channel_p._emb"] = rnd(Nmax, P, std=0.5)
        sd[p + "_channel_p._proj_p.weight"] = rnd(D, D, std=0.2)
        sd[p + "_channel_p._alpha"] = rnd(1, std=0.5)
        sd[p + "_channel_p._beta"] = 1 + rnd(1, std=0.2)
        sd[p + "_mffn.lin0.weight"] = rnd(D, 3 * D, std=0.1)
        sd[p + "_mffn.lin1.weight"] = rnd(ffn_mult * D, D, std=0.1)
        sd[p + "_mffn.lin2.weight"] = rnd(D, ffn_mult * D, std=0.1)
        sd[p + "_mffn.lin3.weight"] = rnd(ffn_mult * D, D, std=0.1)
    return sd
