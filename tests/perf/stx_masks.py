"""stx_masks.py: sparsetx attention patterns as PyTorch mask functions, for the peers of the
benchmarks in this folder (FlexAttention's mask_mod(b, h, q_idx, kv_idx), or a dense boolean
mask for eager attention).

The grammar and the element-wise definitions are the project's (include/sparsetx.h):
    component := dense | local:L | strided:L | fixed:L:C[:G]
    merged    := component ('+' component)*          one softmax over the union
    layer     := merged | '[' merged (';' merged)* ']'   a list over heads, cycled
    model     := layer (',' layer)*                  a list over layers, cycled
Key k is readable by query q (always k <= q) when dense: always; local:L: q-L < k;
strided:L: (q-k) mod L == 0; fixed:L:C:G: floor(k/L) == floor(q/L), or k mod L lies in head
h's summary group g = h mod G: [L-(g+1)C, L-gC).

The parsing needs nothing; the masks need torch (imported here when present).
"""

try:
    import torch
except Exception:  # ImportError, or a broken install: the callers say so, run without peers
    torch = None


def parse_model_pattern(text):
    """'a,b' -> ['a', 'b']: the layer patterns, cycled over layers."""
    return [layer.strip() for layer in text.split(",")]


def parse_layer_pattern(text):
    """'local:128+strided:128' or '[a;b]' -> a list over heads (cycled) of lists of
    components, each (kind, [ints])."""
    text = text.strip()
    heads = text[1:-1].split(";") if text.startswith("[") else [text]
    out = []
    for merged in heads:
        comps = []
        for comp in merged.split("+"):
            parts = comp.strip().split(":")
            if parts[0] not in ("dense", "local", "strided", "fixed"):
                raise ValueError(f"unknown pattern component {comp!r}")
            comps.append((parts[0], [int(p) for p in parts[1:]]))
        out.append(comps)
    return out


def pattern_kind(text):
    """'dense', 'local', 'strided' or 'fixed' for a layer of one component, else 'other'."""
    heads = parse_layer_pattern(text)
    if len(heads) == 1 and len(heads[0]) == 1:
        return heads[0][0][0]
    return "other"


def component_mask(kind, a, h, q, k):
    """Element-wise mask of one component in natural order, without the causal part. q, k, h
    are integer tensors that broadcast; no Python branching on their values, so FlexAttention
    can trace it."""
    if kind == "dense":
        return q >= k - k  # all True (q >= 0), of the broadcast shape
    if kind == "local":
        return q - k < a[0]
    if kind == "strided":
        return torch.remainder(q - k, a[0]) == 0
    if kind == "fixed":
        L, C = a[0], a[1]
        G = a[2] if len(a) > 2 else 1
        same = torch.div(q, L, rounding_mode="floor") == torch.div(k, L, rounding_mode="floor")
        # k mod L in [L-(g+1)C, L-gC)  <=>  (L-1 - k mod L) div C == g, with g = h mod G
        group = torch.div(L - 1 - torch.remainder(k, L), C, rounding_mode="floor")
        return same | (group == torch.remainder(h, G))
    raise ValueError(f"pattern component {kind!r} has no mask")


def layer_mask_mod(text):
    """(mask_mod(b, h, q, k), per_head) of one layer pattern in natural order, causal.
    per_head is True when heads differ (a head list, or fixed with G > 1)."""
    heads = parse_layer_pattern(text)
    per_head = len(heads) > 1 or any(kind == "fixed" and len(a) > 2 and a[2] > 1
                                     for comps in heads for kind, a in comps)

    def mask_mod(b, h, q, k):
        allowed = None
        for i, comps in enumerate(heads):
            m = None
            for kind, a in comps:
                c = component_mask(kind, a, h, q, k)
                m = c if m is None else (m | c)
            if len(heads) > 1:
                m = m & (torch.remainder(h, len(heads)) == i)
            allowed = m if allowed is None else (allowed | m)
        return allowed & (q >= k)
    return mask_mod, per_head


def strided_col_mask_mod(L, n):
    """strided:L in sparsetx's transposed order (lib/layout.h: position r*L + c at slot
    c*R + r, R = ceil(n / L)): causal attention inside chunks of R slots."""
    R = -(-n // L)

    def mask_mod(b, h, q, k):
        return (q >= k) & (torch.div(q, R, rounding_mode="floor")
                           == torch.div(k, R, rounding_mode="floor"))
    return mask_mod, R


def dense_mask(mask_mod, heads, n, device="cpu"):
    """[heads, n, n] bool from a mask_mod (eager attention; small n only)."""
    q = torch.arange(n, device=device).view(1, n, 1)
    k = torch.arange(n, device=device).view(1, 1, n)
    h = torch.arange(heads, device=device).view(heads, 1, 1)
    b = torch.zeros((), dtype=torch.long, device=device)
    return mask_mod(b, h, q, k).expand(heads, n, n).contiguous()


def count_pairs(mask_mod, heads, n, device="cpu", chunk=1024):
    """Allowed (q, k) pairs summed over heads, from the mask itself (a cross-check of the
    library's count)."""
    total = 0
    k = torch.arange(n, device=device).view(1, 1, n)
    h = torch.arange(heads, device=device).view(heads, 1, 1)
    b = torch.zeros((), dtype=torch.long, device=device)
    for s in range(0, n, chunk):
        q = torch.arange(s, min(n, s + chunk), device=device).view(1, -1, 1)
        total += int(mask_mod(b, h, q, k).expand(heads, q.shape[1], n).sum())
    return total
