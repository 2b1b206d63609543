"""ImageDataset and DeviceLoader: determinism, normalisation, augmentation, resume, sharding."""
import io

import numpy as np
import pytest
import torch

from sdesam.data import DeviceLoader, ImageDataset
from sdesam.data.datasets import channel_stats
from sdesam.data.loader import crop_and_flip


def make_dataset(n=37, c=3, h=8, w=8, seed=0):
    """Random images; label i = example i (num_classes = n), so labels identify examples."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(1, 256, (n, c, h, w), generator=g, dtype=torch.uint8)
    mean, std = channel_stats(images)
    return ImageDataset("toy", "train", images, torch.arange(n), n, mean, std)


def epochs(loader, count):
    return [[(x.clone(), y.clone()) for x, y in loader] for _ in range(count)]


def assert_same_batches(a, b):
    assert len(a) == len(b)
    for (xa, ya), (xb, yb) in zip(a, b):
        assert torch.equal(ya, yb) and torch.equal(xa, xb)


def test_channel_stats_exact():
    data = make_dataset(n=11, c=2)
    pixels = data.images.double().numpy() / 255
    mean, std = channel_stats(data.images)
    assert mean == pytest.approx(tuple(pixels.mean(axis=(0, 2, 3))), abs=1e-14)
    assert std == pytest.approx(tuple(pixels.std(axis=(0, 2, 3))), abs=1e-14)


def test_image_dataset_checks_and_subset():
    data = make_dataset()
    sub = data.subset(5, torch.Generator().manual_seed(1))
    again = data.subset(5, torch.Generator().manual_seed(1))
    assert len(sub) == 5 and torch.equal(sub.labels, again.labels)
    assert len(set(sub.labels.tolist())) == 5
    assert torch.equal(sub.images, data.images[sub.labels])
    assert (sub.mean, sub.std, sub.name, sub.split) == (data.mean, data.std, "toy", "train")
    with pytest.raises(ValueError, match="n must be <= 37"):
        data.subset(38, torch.Generator())
    with pytest.raises(ValueError, match="uint8"):
        ImageDataset("x", "train", data.images.float(), data.labels, 37, data.mean, data.std)
    with pytest.raises(ValueError, match="int64"):
        ImageDataset("x", "train", data.images, data.labels.int(), 37, data.mean, data.std)
    with pytest.raises(ValueError, match="3 entries"):
        ImageDataset("x", "train", data.images, data.labels, 37, (0.5,), (0.2,))


def test_epoch_covers_data_once_and_normalises():
    data = make_dataset()
    loader = DeviceLoader(data, 8, generator=0)
    assert len(loader) == 5
    (first, second) = epochs(loader, 2)
    assert [len(y) for _, y in first] == [8, 8, 8, 8, 5]
    for batches in (first, second):
        labels = torch.cat([y for _, y in batches])
        assert sorted(labels.tolist()) == list(range(37))
    assert not torch.equal(torch.cat([y for _, y in first]), torch.cat([y for _, y in second]))
    mean = torch.tensor(data.mean).view(1, 3, 1, 1)
    std = torch.tensor(data.std).view(1, 3, 1, 1)
    for x, y in first:
        assert x.dtype == torch.float32 and y.dtype == torch.int64 and x.shape[1:] == (3, 8, 8)
        assert torch.equal(x, (data.images[y].float() / 255 - mean) / std)
    everything = torch.cat([x for x, _ in first])
    assert everything.mean(dim=(0, 2, 3)).abs().max() < 1e-5
    assert (everything.std(dim=(0, 2, 3), unbiased=False) - 1).abs().max() < 1e-5
    assert loader.epoch == 2


def test_unshuffled_order_and_options():
    data = make_dataset()
    plain = DeviceLoader(data, 10, shuffle=False, normalize=False)
    batches = epochs(plain, 1)[0]
    assert torch.cat([y for _, y in batches]).tolist() == list(range(37))
    assert torch.equal(batches[0][0], data.images[:10].float() / 255)
    half = DeviceLoader(data, 10, shuffle=False, dtype=torch.bfloat16, channels_last=True)
    ref = DeviceLoader(data, 10, shuffle=False)
    for (xh, _), (xr, _) in zip(half, ref):
        assert xh.dtype == torch.bfloat16 and xh.is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(xh, xr.to(torch.bfloat16))
    dropped = DeviceLoader(data, 10, shuffle=False, drop_last=True)
    assert len(dropped) == 3 and [len(y) for _, y in dropped] == [10, 10, 10]


def test_seed_determinism():
    data = make_dataset()
    kwargs = dict(augment=True)
    a = epochs(DeviceLoader(data, 8, generator=3, **kwargs), 2)
    b = epochs(DeviceLoader(data, 8, generator=torch.Generator().manual_seed(3), **kwargs), 2)
    c = epochs(DeviceLoader(data, 8, generator=4, **kwargs), 2)
    assert_same_batches(a[0] + a[1], b[0] + b[1])
    assert not torch.equal(a[0][0][1], c[0][0][1])


def variants(image: np.ndarray, padding: int):
    """Every crop-and-flip of one (C, H, W) image, computed by slicing a zero-padded copy."""
    C, H, W = image.shape
    padded = np.pad(image, ((0, 0), (padding, padding), (padding, padding)))
    out = {}
    for dy in range(2 * padding + 1):
        for dx in range(2 * padding + 1):
            crop = padded[:, dy:dy + H, dx:dx + W]
            out[(dy, dx, False)] = crop
            out[(dy, dx, True)] = crop[:, :, ::-1]
    return out


def test_crop_and_flip_by_hand():
    images = (torch.arange(3 * 2 * 5 * 6) % 250 + 1).to(torch.uint8).reshape(3, 2, 5, 6)
    params = [(0, 0, False), (4, 4, True), (1, 3, True)]
    out = crop_and_flip(images, torch.tensor([p[:2] for p in params]),
                        torch.tensor([p[2] for p in params]), padding=2)
    assert out.dtype == torch.uint8 and out.shape == images.shape
    for b, p in enumerate(params):
        np.testing.assert_array_equal(out[b].numpy(), variants(images[b].numpy(), 2)[p])
    # (0, 0): two rows and columns of zero padding at the top left
    assert out[0, :, :2].eq(0).all() and out[0, :, :, :2].eq(0).all()
    assert torch.equal(out[0, :, 2:, 2:], images[0, :, :3, :4])


def test_loader_augmentation_follows_documented_draws():
    """The plan is randperm(N), randint(0, 2p+1, (N, 2)), randint(0, 2, (N,)) on the generator."""
    data = make_dataset(n=10)
    loader = DeviceLoader(data, 10, augment=True, normalize=False, dtype=torch.float64, generator=7)
    x, y = next(iter(loader))
    g = torch.Generator().manual_seed(7)
    order = torch.randperm(10, generator=g)
    offsets = torch.randint(0, 9, (10, 2), generator=g)
    flips = torch.randint(0, 2, (10,), generator=g).bool()
    assert torch.equal(y, order)
    pixels = (x * 255).round().to(torch.uint8)
    for k in range(10):
        key = (int(offsets[k, 0]), int(offsets[k, 1]), bool(flips[k]))
        np.testing.assert_array_equal(pixels[k].numpy(), variants(data.images[order[k]].numpy(), 4)[key])


def test_loader_augmentation_distribution():
    data = make_dataset(n=64)
    loader = DeviceLoader(data, 64, augment=True, normalize=False, dtype=torch.float64, generator=1)
    seen = []
    for _ in range(5):
        for x, y in loader:
            pixels = (x * 255).round().to(torch.uint8).numpy()
            for k in range(len(y)):
                matches = [key for key, v in variants(data.images[y[k]].numpy(), 4).items()
                           if np.array_equal(v, pixels[k])]
                assert len(matches) == 1
                seen.append(matches[0])
    assert {s[0] for s in seen} == set(range(9)) and {s[1] for s in seen} == set(range(9))
    assert 0.35 < np.mean([s[2] for s in seen]) < 0.65


@pytest.mark.parametrize("stop_after", [0, 2, 5])
def test_resume_is_bit_identical(stop_after):
    data = make_dataset()
    kwargs = dict(augment=True, drop_last=False)
    original = DeviceLoader(data, 8, generator=11, **kwargs)
    epochs(original, 1)
    it = iter(original)
    for _ in range(stop_after):  # 5 = the whole epoch
        next(it)
    buffer = io.BytesIO()
    torch.save(original.state_dict(), buffer)
    rest = [(x.clone(), y.clone()) for x, y in it]
    later = epochs(original, 2)

    resumed = DeviceLoader(data, 8, generator=999, **kwargs)
    buffer.seek(0)
    resumed.load_state_dict(torch.load(buffer))
    assert resumed.epoch == (1 if stop_after < 5 else 2)
    # the first `for` loop finishes epoch 1 (or, when it was finished, runs epoch 2)
    tail = rest + sum(later, [])
    replay = []
    while len(replay) < len(tail):
        replay += [(x.clone(), y.clone()) for x, y in resumed]
    assert_same_batches(replay, tail)
    assert resumed.epoch == original.epoch == 4


def test_loop_left_early_continues_its_epoch():
    data = make_dataset()
    whole = epochs(DeviceLoader(data, 8, generator=2), 2)
    loader = DeviceLoader(data, 8, generator=2)
    for k, _ in enumerate(loader):
        if k == 1:
            break
    assert loader.epoch == 0
    assert_same_batches([(x, y) for x, y in loader], whole[0][2:])
    assert loader.epoch == 1
    assert_same_batches([(x, y) for x, y in loader], whole[1])


def test_resume_checks_settings_and_stale_iterators():
    data = make_dataset()
    state = DeviceLoader(data, 8).state_dict()
    with pytest.raises(ValueError, match="batch_size=8"):
        DeviceLoader(data, 4).load_state_dict(state)
    with pytest.raises(ValueError, match="augment"):
        DeviceLoader(data, 8, augment=True).load_state_dict(state)
    loader = DeviceLoader(data, 8)
    stale = iter(loader)
    next(stale)
    loader.load_state_dict(state)
    with pytest.raises(RuntimeError, match="superseded"):
        next(stale)


@pytest.mark.parametrize("world_size,drop_last", [(2, False), (2, True), (3, False)])
def test_sharding_reconstructs_single_process(world_size, drop_last):
    data = make_dataset()
    per_rank = 3
    kwargs = dict(augment=True, drop_last=drop_last, generator=5)
    single = epochs(DeviceLoader(data, per_rank * world_size, **kwargs), 2)
    ranks = [epochs(DeviceLoader(data, per_rank, rank=r, world_size=world_size, **kwargs), 2)
             for r in range(world_size)]
    for e in range(2):
        assert all(len(r[e]) == len(single[e]) for r in ranks)
        for k, (x, y) in enumerate(single[e]):
            shares = [r[e][k] for r in ranks]
            assert torch.equal(torch.cat([s[0] for s in shares]), x)
            assert torch.equal(torch.cat([s[1] for s in shares]), y)
    # 37 = 4 * 9 + 1 with world_size 3: the last global batch has one example, on rank 0
    if world_size == 3:
        assert [len(r[0][-1][1]) for r in ranks] == [1, 0, 0]


def test_loader_argument_checks():
    data = make_dataset()
    with pytest.raises(ValueError, match="rank must be < world_size"):
        DeviceLoader(data, 4, rank=2, world_size=2)
    with pytest.raises(ValueError, match="fewer than one global batch"):
        DeviceLoader(data, 20, world_size=2, drop_last=True)
    with pytest.raises(ValueError, match="floating-point"):
        DeviceLoader(data, 4, dtype=torch.int32)
    with pytest.raises(ValueError, match="batch_size"):
        DeviceLoader(data, 0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_batches_equal_cpu_batches():
    data = make_dataset()
    cpu = epochs(DeviceLoader(data, 8, augment=True, generator=2), 1)[0]
    gpu = epochs(DeviceLoader(data, 8, augment=True, generator=2, device="cuda"), 1)[0]
    assert all(xg.is_cuda for xg, _ in gpu)
    assert_same_batches(cpu, [(x.cpu(), y.cpu()) for x, y in gpu])
