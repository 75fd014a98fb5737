"""The pre-training losses against a loop-by-loop evaluation of eq. 1-4, and the gathered (2-process) version
whose gradients, averaged over ranks as DistributedDataParallel does, are the single-process ones."""

import math
import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from cocu.train.loss import (
    MAX_LOGIT_SCALE,
    CocuLoss,
    clamped_scale,
    infonce_loss,
    initial_log_scale,
    multilabel_loss,
)

B, L, D = 4, 3, 5


def _features(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    image = F.normalize(torch.randn(B, D, generator=g, dtype=torch.float64), dim=-1)
    text = F.normalize(torch.randn(B, D, generator=g, dtype=torch.float64), dim=-1)
    labels = F.normalize(torch.randn(B, L, D, generator=g, dtype=torch.float64), dim=-1)
    return image, text, labels


def _dot(a, b) -> float:
    return sum(float(x) * float(y) for x, y in zip(a, b))


def _eq1(z, t, s):
    total = 0.0
    for i in range(B):
        den = sum(math.exp(s * _dot(z[i], t[j])) for j in range(B))
        total += math.log(math.exp(s * _dot(z[i], t[i])) / den)
    return -total / B


def _eq3(z, tl, s):
    total = 0.0
    for i in range(B):
        num = sum(math.exp(s * _dot(z[i], tl[i][l])) for l in range(L))
        den = sum(math.exp(s * _dot(z[i], tl[j][l])) for l in range(L) for j in range(B))
        total += math.log(num / den)
    return -total / B


def _eq4(z, tl, s):
    total = 0.0
    for l in range(L):
        for i in range(B):
            den = sum(math.exp(s * _dot(tl[i][l], z[j])) for j in range(B))
            total += math.log(math.exp(s * _dot(tl[i][l], z[i])) / den)
    return -total / (L * B)


def test_infonce_matches_eq1_and_eq2_computed_by_loops():
    image, text, _ = _features()
    s = 1 / 0.07
    i2t, t2i = infonce_loss(image, text, torch.tensor(s, dtype=torch.float64))
    assert math.isclose(float(i2t), _eq1(image, text, s), rel_tol=1e-12)
    assert math.isclose(float(t2i), _eq1(text, image, s), rel_tol=1e-12)  # eq. 2 is eq. 1 with roles swapped


def test_multilabel_matches_eq3_and_eq4_computed_by_loops():
    image, _, labels = _features(1)
    s = 7.5
    i2p, p2i = multilabel_loss(image, labels, torch.tensor(s, dtype=torch.float64))
    assert math.isclose(float(i2p), _eq3(image, labels, s), rel_tol=1e-12)
    assert math.isclose(float(p2i), _eq4(image, labels, s), rel_tol=1e-12)


def test_multilabel_with_one_label_reduces_to_infonce():
    image, text, _ = _features(2)
    s = torch.tensor(3.0, dtype=torch.float64)
    one_label = torch.stack(multilabel_loss(image, text[:, None], s))
    assert torch.allclose(one_label, torch.stack(infonce_loss(image, text, s)))


def test_total_is_the_sum_of_averaged_symmetric_pairs_with_separate_temperatures():
    image, text, labels = _features(3)
    loss = CocuLoss(multilabel=True).double()
    with torch.no_grad():
        loss.multilabel_logit_scale.fill_(math.log(5.0))
    caption_log_scale = torch.tensor(math.log(20.0), dtype=torch.float64)
    out = loss(image * 3.0, text * 0.5, labels * 2.0, caption_log_scale)  # unnormalised in, normalised inside
    cap = (_eq1(image, text, 20.0) + _eq1(text, image, 20.0)) / 2
    ml = (_eq3(image, labels, 5.0) + _eq4(image, labels, 5.0)) / 2
    assert math.isclose(float(out.caption.detach()), cap, rel_tol=1e-10)
    assert math.isclose(float(out.multilabel.detach()), ml, rel_tol=1e-10)
    assert math.isclose(float(out.total.detach()), cap + ml, rel_tol=1e-10)


def test_caption_only_loss_has_no_multilabel_term():
    image, text, _ = _features(4)
    out = CocuLoss(multilabel=False).double()(image, text, None, torch.tensor(1.0, dtype=torch.float64))
    assert out.multilabel is None and torch.equal(out.total, out.caption)


def test_temperature_starts_at_0_07_and_scale_is_clamped_at_100():
    assert math.isclose(math.exp(initial_log_scale()), 1 / 0.07)
    assert math.isclose(float(CocuLoss(True).multilabel_logit_scale.detach().exp()), 1 / 0.07, rel_tol=1e-6)
    big = torch.tensor(10.0, requires_grad=True)
    scale = clamped_scale(big)
    assert float(scale.detach()) == MAX_LOGIT_SCALE
    scale.backward()
    assert float(big.grad) == 0.0


def _single_process_reference():
    image, text, labels = _features(5)
    image, text, labels = (x.clone().requires_grad_(True) for x in (image, text, labels))
    loss = CocuLoss(multilabel=True).double()
    log_scale = torch.tensor(math.log(12.0), dtype=torch.float64, requires_grad=True)
    out = loss(image, text, labels, log_scale)
    out.total.backward()
    return out, image.grad, text.grad, labels.grad, log_scale.grad, loss.multilabel_logit_scale.grad


def _gathered_worker(rank: int, world: int, port: int, result_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        image, text, labels = _features(5)
        b = B // world
        mine = slice(rank * b, (rank + 1) * b)
        image, text, labels = (x[mine].clone().requires_grad_(True) for x in (image, text, labels))
        loss = CocuLoss(multilabel=True).double()
        log_scale = torch.tensor(math.log(12.0), dtype=torch.float64, requires_grad=True)
        out = loss(image, text, labels, log_scale)
        out.total.backward()
        grads = [log_scale.grad, loss.multilabel_logit_scale.grad]
        for g in grads + [image.grad, text.grad, labels.grad]:
            g /= world  # DistributedDataParallel's average: its all-reduce of gradients pre-divided by the world
        for g in grads:
            dist.all_reduce(g)
        torch.save(
            {
                "total": out.total.detach(),
                "caption": out.caption.detach(),
                "multilabel": out.multilabel.detach(),
                "image": image.grad,
                "text": text.grad,
                "labels": labels.grad,
                "scales": torch.stack(grads),
            },
            os.path.join(result_dir, f"rank{rank}.pt"),
        )
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_gathered_loss_over_two_gloo_processes_equals_single_process(tmp_path):
    mp.spawn(_gathered_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    out, g_image, g_text, g_labels, g_caption_scale, g_ml_scale = _single_process_reference()
    b = B // 2
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        mine = slice(rank * b, (rank + 1) * b)
        assert torch.allclose(got["total"], out.total.detach(), rtol=1e-12, atol=0)
        assert torch.allclose(got["caption"], out.caption.detach(), rtol=1e-12, atol=0)
        assert torch.allclose(got["multilabel"], out.multilabel.detach(), rtol=1e-12, atol=0)
        assert torch.allclose(got["image"], g_image[mine], rtol=1e-10, atol=1e-14)
        assert torch.allclose(got["text"], g_text[mine], rtol=1e-10, atol=1e-14)
        assert torch.allclose(got["labels"], g_labels[mine], rtol=1e-10, atol=1e-14)
        assert torch.allclose(got["scales"], torch.stack([g_caption_scale, g_ml_scale]), rtol=1e-10, atol=1e-14)
