"""The safetensors reader against thousands of damaged files: every one is read or refused with a
CheckpointError that names the file; no other exception, no hang, no allocation the file cannot
back (every declared byte range is checked against the file before anything is read)."""
import collections
import json
import random
import time

import torch
from safetensors.torch import save_file

from svd_fast.checkpoints.io import CheckpointError, open_tensors

CASES = 2000
# Values a damaged or hostile header may put in each field of a tensor entry.
FIELD_VALUES = {
    "dtype": ["F32", "F16", "BF16", "I64", "U8", "BOOL", "F64", "X9", 5, None, [], "f32"],
    "shape": [[], [-1], [10**12], [2.5], ["a"], None, [3, 3], [1] * 40, [0], [2**63], "12", [True, 3]],
    "data_offsets": [[0, 10**15], [-4, 0], ["a", 1], [5], None, [8, 4], [0, 0], [1.5, 9.5], [0, 2**64], "0,48"],
}
WHOLE_HEADERS = [[], "x", 5, None, {"a": 5}, {"a": {}}, {"__metadata__": 5}, {"__metadata__": {"x": [1]}}]


def _mutations(data: bytes, seed: int = 0):
    """(kind, damaged bytes) pairs: bit flips, truncation, a bad header length, bad entry fields
    and malformed headers (re-serialised with a consistent length prefix)."""
    rng = random.Random(seed)
    header_len = int.from_bytes(data[:8], "little")
    header, body = json.loads(data[8 : 8 + header_len]), data[8 + header_len :]
    for _ in range(CASES):
        kind = rng.choice(["flip", "truncate", "length", "field", "header"])
        if kind == "flip":
            damaged = bytearray(data)
            for _ in range(rng.randint(1, 4)):
                damaged[rng.randrange(len(damaged))] ^= 1 << rng.randrange(8)
            yield kind, bytes(damaged)
        elif kind == "truncate":
            yield kind, data[: rng.randrange(len(data))]
        elif kind == "length":
            length = rng.choice([0, 1, 2**63, 2**64 - 1, header_len - 1, header_len + 1])
            yield kind, length.to_bytes(8, "little") + data[8:]
        else:
            changed = json.loads(json.dumps(header))
            if kind == "field":
                field = rng.choice(list(FIELD_VALUES))
                changed[rng.choice(["a", "b", "c"])][field] = rng.choice(FIELD_VALUES[field])
            else:
                changed = rng.choice(WHOLE_HEADERS)
            raw = json.dumps(changed).encode()
            yield kind, len(raw).to_bytes(8, "little") + raw + body


def test_damaged_safetensors_are_read_or_refused_cleanly(tmp_path):
    original = tmp_path / "original.safetensors"
    save_file({"a": torch.randn(3, 4), "b": torch.randn(5).half(), "c": torch.arange(6)}, original)
    outcomes, failures = collections.Counter(), []
    for i, (kind, damaged) in enumerate(_mutations(original.read_bytes())):
        path = tmp_path / f"damaged_{i % 8}.safetensors"
        path.write_bytes(damaged)
        start = time.perf_counter()
        try:
            source = open_tensors(path)
            tensors = {key: source.read(key) for key in source.keys()}
            assert all(t.numel() <= 12 for t in tensors.values())  # nothing larger than the file's own tensors
            outcomes[kind, "read"] += 1
        except CheckpointError as err:
            outcomes[kind, "refused"] += 1
            if str(path) not in str(err):
                failures.append((kind, f"message does not name the file: {err}"))
        except Exception as err:  # noqa: BLE001 - any other exception is the failure this test looks for
            failures.append((kind, f"{type(err).__name__}: {err}"))
        if time.perf_counter() - start > 1.0:
            failures.append((kind, f"took {time.perf_counter() - start:.1f} s"))
    print(f"{CASES} damaged files: {dict(sorted(outcomes.items()))}")
    assert not failures, failures[:10]
    assert sum(outcomes.values()) == CASES
    # Each kind of damage was tried; flips inside tensor data leave a readable file, others are refused.
    assert {kind for kind, _ in outcomes} == {"flip", "truncate", "length", "field", "header"}
    assert outcomes["flip", "read"] > 0 and outcomes["truncate", "refused"] > 0
