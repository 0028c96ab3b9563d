import math
import os
import socket

import pytest
import torch
import torch.nn.functional as F

from embedlab.encode import collate, embed_batch, tokenize
from embedlab.loss import grad_cache_step, info_nce
from tiny import tiny_encoder


def naive_info_nce(a, p, n, t):
    total = 0.0
    for i in range(a.shape[0]):
        sims = [float(a[i] @ p[j]) / t for j in range(p.shape[0])] + [float(a[i] @ n[j]) / t for j in range(n.shape[0])]
        total += -(sims[i] - math.log(sum(math.exp(s) for s in sims)))
    return total / a.shape[0]


def test_info_nce_equals_per_row_loop():
    torch.manual_seed(0)
    a, p, n = (F.normalize(torch.randn(6, 16), dim=-1) for _ in range(3))
    assert float(info_nce(a, p, n, 0.05)) == pytest.approx(naive_info_nce(a, p, n, 0.05), rel=1e-5)
    # no hard negatives: in-batch positives only
    assert float(info_nce(a, p, None, 0.1)) == pytest.approx(naive_info_nce(a, p, p[:0], 0.1), rel=1e-5)


def test_info_nce_prefers_aligned_pairs():
    torch.manual_seed(0)
    a = F.normalize(torch.randn(8, 16), dim=-1)
    good = info_nce(a, a.clone(), F.normalize(torch.randn(8, 16), dim=-1), 0.05)
    bad = info_nce(a, F.normalize(torch.randn(8, 16), dim=-1), a.clone(), 0.05)
    assert float(good) < 0.1 < float(bad)


def _lora_encoder():
    from peft import LoraConfig, get_peft_model

    enc = tiny_encoder("llama")
    model = get_peft_model(enc.model, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.3, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, prm in model.named_parameters():
            if "lora_B" in name:
                prm.normal_(0, 0.2)
    model.train()  # dropout on: the gradient cache must replay it exactly
    return enc, model


def _batches(enc, chunk):
    texts = ["a man is playing a guitar .", "the dog is running", "a cat", "the woman is eating food in the park .",
             "a man plays", "a dog runs in a park", "cat", "a woman is cooking", "an man is eating",
             "the cat is running on the park", "dog", "a woman"]
    ids, _ = tokenize(enc.tokenizer, enc.spec, texts, 32)
    return [collate(ids[j:j + chunk], enc.pad_id, True, torch.device("cpu")) for j in range(0, len(ids), chunk)]


def test_grad_cache_gradients_equal_plain_loss():
    enc, model = _lora_encoder()
    chunks_small, chunk_all = _batches(enc, 3), _batches(enc, 12)

    def loss_fn(e):
        return info_nce(e[:4], e[4:8], e[8:], 0.05)

    def embed(b):
        return embed_batch(model, b, enc.spec)

    torch.manual_seed(123)
    cached = grad_cache_step(embed, chunks_small, loss_fn, torch.device("cpu"))
    g_cache = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad()
    # Plain loss with the same dropout masks: replay the chunks in the same RNG sequence.
    torch.manual_seed(123)
    plain = loss_fn(torch.cat([embed(c) for c in chunks_small]))
    plain.backward()
    assert float(cached) == pytest.approx(float(plain.detach()), abs=1e-6)
    for n, p in model.named_parameters():
        if p.requires_grad:
            assert torch.allclose(g_cache[n], p.grad, atol=1e-5), n
    assert len(chunk_all) == 1


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world, port, a, p, n, q):
    import torch.distributed as dist

    from embedlab.loss import distributed_info_nce

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    B = a.shape[0] // world
    sl = slice(rank * B, (rank + 1) * B)
    la, lp, ln = (x[sl].clone().requires_grad_() for x in (a, p, n))
    loss = distributed_info_nce(la, lp, ln, 0.05)
    (loss * world).backward()
    q.put((rank, float(loss.detach()), la.grad.numpy(), lp.grad.numpy(), ln.grad.numpy()))  # numpy: no shared-memory handles
    dist.destroy_process_group()


def test_all_gather_two_processes_matches_single_process():
    import torch.multiprocessing as mp

    torch.manual_seed(0)
    a, p, n = (F.normalize(torch.randn(8, 16), dim=-1) for _ in range(3))
    ref_in = [x.clone().requires_grad_() for x in (a, p, n)]
    ref = info_nce(*ref_in, 0.05)
    ref.backward()
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_worker, args=(r, 2, port, a, p, n, q)) for r in range(2)]
    for pr in procs:
        pr.start()
    res = sorted((q.get(timeout=120) for _ in procs), key=lambda r: r[0])
    for pr in procs:
        pr.join(timeout=60)
        assert pr.exitcode == 0
    for rank, loss, ga, gp, gn in res:
        assert loss == pytest.approx(float(ref), abs=1e-5)
        sl = slice(rank * 4, rank * 4 + 4)
        # Each process backprops W * loss through its own slice; DDP then averages over W processes,
        # so the parameters get exactly the single-process gradient.
        for g, r in ((ga, ref_in[0]), (gp, ref_in[1]), (gn, ref_in[2])):
            assert torch.allclose(torch.from_numpy(g), 2 * r.grad[sl], atol=1e-5)
