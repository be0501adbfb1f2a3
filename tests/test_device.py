"""Device checks and the allocator settings of loading (omni/device.py)."""

import omni


def test_int8_with_device_auto_runs_on_the_cpu_of_a_gpu_machine(monkeypatch):
    import torch

    from omni.device import check_options

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert check_options("auto", "float32", None).type == "cuda"
    assert check_options("auto", "float32", "int8").type == "cpu"  # not refused as "int8 is CPU only"


def test_loading_leaves_glibc_keeping_freed_heap(tiny_ckpt, monkeypatch):
    """After loading, large temporaries must be reused, not handed back and faulted in again on every call
    (setting the mmap threshold pins glibc's trim threshold at 128 KiB: oneDNN int8 matmuls ran 2x slower)."""
    from omni import device

    calls = []

    class FakeLibc:
        def mallopt(self, param, value):
            calls.append((param, value))

        def malloc_trim(self, pad):
            pass
    monkeypatch.setattr(device, "_glibc", lambda: FakeLibc())
    omni.load_model(tiny_ckpt, device="cpu")
    final = dict(calls)  # the last value set for each parameter
    assert final[-3] == 32 << 20  # M_MMAP_THRESHOLD
    assert final[-1] >= 256 << 20  # M_TRIM_THRESHOLD
