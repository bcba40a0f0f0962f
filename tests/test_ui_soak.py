"""The web UI under hostile clients (issue 27): 200 requests mixing hostile PNGs, odd names, renames during
generation and concurrent training starts, against a real server, while another client polls GET /config.

Bounds asserted: no /config poll waits more than 3 s; the process's RSS grows by at most 300 MB between the warm-up
and the end; the library still lists exactly its files; exactly one of two simultaneous training starts runs."""

import resource
import struct
import threading
import time
import urllib.request
import zlib

import pytest

from ui_helpers import builtin_loras, start_app

pytestmark = pytest.mark.slow

CONFIG_WAIT_LIMIT_S = 3.0
RSS_GROWTH_LIMIT_MB = 300


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def hostile_png(path, text: str, side: int = 13000):
    """A PNG whose header claims side×side RGBA pixels, with a long "parameters" chunk and a token IDAT: reading
    the text must not decode (or allocate) the pixels."""
    header = struct.pack(">IIBBBBB", side, side, 8, 6, 0, 0, 0)
    body = (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"tEXt", b"parameters\0" + text.encode())
            + _chunk(b"IDAT", zlib.compress(b"\0" * 64)) + _chunk(b"IEND", b""))
    path.write_bytes(body)
    return path


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def test_two_hundred_hostile_requests_leave_the_server_responsive_and_bounded(tmp_path):
    from gradio_client import Client, handle_file

    lora_dir = builtin_loras(tmp_path / "loras")
    pngs = [hostile_png(tmp_path / f"h{i}.png", text) for i, text in enumerate([
        "a" * 1_000_000, "p" + " " * 500_000 + "<lora:x:1>\nSteps: 3", "<lora:" * 150_000,
        "a cat <lora:bold:nan>\nSteps: 2, Seed: 99999999999999999999", "x\nSteps: many, Size: 64"])]
    image = tmp_path / "img.png"
    from PIL import Image

    Image.new("RGB", (64, 64), (200, 50, 50)).save(image)
    demo, url = start_app(lora_dir, tmp_path / "out")
    waits, errors, outcomes = [], [], {"train": []}
    done = threading.Event()

    def poll_config():
        while not done.is_set():
            start = time.perf_counter()
            urllib.request.urlopen(f"{url.rstrip('/')}/config", timeout=30).read()
            waits.append(time.perf_counter() - start)
            time.sleep(0.05)

    def generate(client, i):
        client.predict("builtin", f"a red circle {i}", "", i, 1, 5.0, 64, 64, "Euler", 1,
                       True, "bold", 0.5, False, None, 1.0, False, None, 1.0, False, None, 1.0, api_name="/generate")

    def expect_refusal(call):
        try:
            call()
        except Exception as error:  # noqa: BLE001 - a refusal is the expected outcome
            return str(error)
        return None

    def worker(kind, count):
        client = Client(url, verbose=False)
        for i in range(count):
            try:
                if kind == "png":
                    expect_refusal(lambda: client.predict(handle_file(str(pngs[i % len(pngs)])), api_name="/png_fields"))
                elif kind == "names":
                    for bad in ("x.safetensors.safetensors", "../../etc/passwd", "a" * 500, "bold\0x"):
                        assert expect_refusal(lambda: client.predict("bold", bad, api_name="/on_rename")) is not None
                    client.predict("sepia-ish", f"sepia-{i}", api_name="/on_rename")  # a rename during generation
                    client.predict(f"sepia-{i}", "sepia-ish", api_name="/on_rename")
                else:
                    generate(client, i)
            except Exception as error:  # noqa: BLE001 - collected and asserted below
                errors.append(f"{kind} {i}: {error}")

    def start_training():
        client = Client(url, verbose=False)
        outcome = expect_refusal(lambda: client.predict(
            "soaked", [handle_file(str(image))], "", "a red square", "", "4", "4", "2", "1e-3", "64", False, "builtin",
            api_name="/start_training"))
        outcomes["train"].append(outcome or "started")

    poller = threading.Thread(target=poll_config, daemon=True)
    poller.start()
    try:
        generate(Client(url, verbose=False), 0)  # warm-up: the pipeline and the LoRA are loaded once
        rss_before = _rss_mb()
        threads = [threading.Thread(target=worker, args=args) for args in
                   (("png", 60), ("png", 40), ("names", 20), ("gen", 40), ("gen", 38))]
        starters = [threading.Thread(target=start_training) for _ in range(2)]
        for thread in threads + starters:
            thread.start()
        for thread in threads + starters:
            thread.join(600)
        rss_after = _rss_mb()
    finally:
        done.set()
        poller.join(30)
        from lora_diffusion.ui.library import LoraLibrary

        listed = LoraLibrary(lora_dir).names()
        demo.close()
    assert errors == []
    assert sorted(o if o == "started" else "refused" for o in outcomes["train"]) == ["refused", "started"], outcomes
    assert any("already starting" in o or "already going" in o for o in outcomes["train"] if o != "started")
    assert max(waits) < CONFIG_WAIT_LIMIT_S, f"GET /config waited {max(waits):.1f} s"
    assert rss_after - rss_before < RSS_GROWTH_LIMIT_MB, f"RSS {rss_before:.0f} -> {rss_after:.0f} MB"
    assert {"bold", "sepia-ish"} <= set(listed) <= {"bold", "sepia-ish", "soaked"}  # no odd name got in
    print(f"soak: {len(waits)} /config polls, longest {max(waits):.2f} s; RSS {rss_before:.0f} -> {rss_after:.0f} MB")
