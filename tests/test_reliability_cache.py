"""Damaged data caches: every way a cache can be damaged is one line naming the file, exit 2, nothing written.

Each case copies a small prepared cache, damages it, and runs ``tfafm train --data cache:DIR`` in-process:
exit code 2, one line on stderr matching the case's pattern, no traceback, the damaged cache left as it was
(no silent rebuild) and nothing new written.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Callable, Optional

import pytest

from test_bad_inputs import assert_refused, registry

pytestmark = pytest.mark.slow

CRITEO_ROWS = 300


def criteo_text(rows: int, salt: int) -> str:
    """Criteo lines whose ids depend on ``salt``: two salts give same-sized caches of different rows."""
    return "".join("\t".join([str(i % 2)] + [str(i % 7)] * 13 + [f"{(i * j + salt) % 13:08x}" for j in range(26)])
                   + "\n" for i in range(rows))


@pytest.fixture(scope="module")
def caches(tmp_path_factory) -> Path:
    """Two criteo caches with the same row counts and different rows, and an avazu one."""
    from tfafm.data.prepare import prepare_spec

    root = tmp_path_factory.mktemp("caches")
    for name, salt in (("mine", 0), ("other", 5)):
        (root / f"{name}.tsv").write_text(criteo_text(CRITEO_ROWS, salt))
        prepare_spec(f"criteo:{root / name}.tsv", str(root / name), shards=2, progress=False)
    header = ("id,click,hour,C1,banner_pos,site_id,site_domain,site_category,app_id,app_domain,app_category,"
              "device_id,device_ip,device_model,device_type,device_conn_type,C14,C15,C16,C17,C18,C19,C20,C21")
    rows = [f"{i},{i % 2},14102100,1005,0,1fbe01fe,f3845767,28905ebd,ecad2386,7801e8d9,07d7df22,a99f214a,"
            f"ddd2926e,44956a24,1,2,15706,320,50,1722,0,35,-1,{i % 9}" for i in range(CRITEO_ROWS)]
    (root / "avazu.csv").write_text("\n".join([header, *rows]) + "\n")
    prepare_spec(f"avazu:{root / 'avazu.csv'}", str(root / "avazu"), shards=2, progress=False)
    (root / "small.yaml").write_text("hyperparams: {hidden_units: [8]}\nembedding_dim: 2\nbatch_size: 64\n")
    return root


Damage = Callable[[Path, Path], str]  # (the copied cache, the fixture root) -> regex of the error line
CASES: dict[str, Damage] = {}
case = registry(CASES)
SHARD = "train-00000-of-00002.tfrecord"


def edit_manifest(cache: Path, edit: Callable[[dict], None],
                  replace: Optional[Callable[[dict], object]] = None) -> None:
    """Edits the manifest in place with ``edit``, or writes ``replace(manifest)`` instead of it."""
    manifest = json.loads((cache / "manifest.json").read_text())
    edit(manifest)
    (cache / "manifest.json").write_text(json.dumps(replace(manifest) if replace else manifest))


@case("a train shard replaced by another cache's shard with the same rows")
def _(cache, root):
    shutil.copy(root / "other" / SHARD, cache / SHARD)
    return rf"cache is damaged: .*{SHARD} is not the shard this cache wrote .*rebuild the cache with tfafm prepare"


@case("a truncated shard")
def _(cache, root):
    data = (cache / SHARD).read_bytes()
    (cache / SHARD).write_bytes(data[: len(data) // 2])
    return rf"cache is damaged: .*{SHARD} has \d+ bytes, the manifest says \d+ \(truncated or replaced\?\)"


@case("an emptied shard")
def _(cache, root):
    (cache / SHARD).write_bytes(b"")
    return rf"{SHARD} has 0 bytes, the manifest says \d+"


@case("a shard from a cache of another format")
def _(cache, root):
    shutil.copy(root / "avazu" / SHARD, cache / SHARD)
    return rf"cache is damaged: .*{SHARD} has \d+ bytes"


@case("a shard replaced by a file of the same size that is no TFRecord file")
def _(cache, root):
    (cache / SHARD).write_bytes(b"\xff" * (cache / SHARD).stat().st_size)
    return rf"{SHARD} ends inside record 1 \(truncated, or not a TFRecord file\)"


@case("a shard and its manifest entry from another format")
def _(cache, root):
    shutil.copy(root / "avazu" / SHARD, cache / SHARD)
    foreign = json.loads((root / "avazu" / "manifest.json").read_text())["splits"]["train"]["shards"][0]
    edit_manifest(cache, lambda m: m["splits"]["train"]["shards"][0].update(bytes=foreign["bytes"]))
    return rf"{SHARD} holds 81 rows, the manifest says 135"  # 135 avazu rows of 96 bytes: 81 of 160


@case("a byte flipped inside a record, caught by its checksum while training reads it")
def _(cache, root):
    data = bytearray((cache / SHARD).read_bytes())
    data[100] ^= 0xFF
    (cache / SHARD).write_bytes(bytes(data))
    return r"a data file is corrupt \(corrupted record at \d+\): .*rebuild the cache with tfafm prepare"


@case("a missing shard")
def _(cache, root):
    (cache / SHARD).unlink()
    return rf"cache is damaged: .*{SHARD} is missing"


@case("edited shard row counts")
def _(cache, root):
    def edit(m):
        m["splits"]["train"]["shards"][0]["rows"] -= 3
        m["splits"]["train"]["rows"] -= 3
    edit_manifest(cache, edit)
    return rf"{SHARD} holds 135 rows, the manifest says 132"


@case("edited split row count")
def _(cache, root):
    edit_manifest(cache, lambda m: m["splits"]["train"].update(rows=11))
    return r"manifest\.json: splits\.train\.rows is 11 but its shards hold 270 rows"


@case("rows that are not a number")
def _(cache, root):
    edit_manifest(cache, lambda m: m["splits"]["validation"].update(rows="many"))
    return r"manifest\.json: splits\.validation\.rows must be an integer >= 0, got 'many'"


@case("manifest without splits")
def _(cache, root):
    edit_manifest(cache, lambda m: m.__delitem__("splits"))
    return r"manifest\.json: splits is missing; rebuild the cache with tfafm prepare"


@case("manifest without source")
def _(cache, root):
    edit_manifest(cache, lambda m: m.__delitem__("source"))
    return r"manifest\.json: source is missing"


@case("manifest that is a list")
def _(cache, root):
    edit_manifest(cache, lambda m: None, replace=lambda m: [m])
    return r"manifest\.json: the manifest must be an object, got 'list'"


@case("manifest that is not JSON")
def _(cache, root):
    (cache / "manifest.json").write_text("{\"kind\": ")
    return r"manifest\.json:1:10: not valid JSON"


@case("manifest of an old cache version")
def _(cache, root):
    edit_manifest(cache, lambda m: m.update(version=1))
    return r"manifest\.json: not a version-2 tfafm data cache; rebuild the cache with tfafm prepare"


@case("stale cache whose spec has an unknown prefix")
def _(cache, root):
    edit_manifest(cache, lambda m: m.update(spec="csv:" + m["spec"].partition(":")[2]))
    return r"manifest\.json: spec must be criteo:PATH, avazu:PATH or parquet:PATH, got 'csv:"


@case("shard file name leaving the cache")
def _(cache, root):
    edit_manifest(cache, lambda m: m["splits"]["train"]["shards"][0].update(file="../other/" + SHARD))
    return r"splits\.train\.shards\[0\]\.file must be a file name inside the cache"


@case("missing preprocessor.json")
def _(cache, root):
    (cache / "preprocessor.json").unlink()
    return r"Preprocessor file not found: .*preprocessor\.json \(rebuild the cache with tfafm prepare\)"


@case("preprocessor.json that is not JSON")
def _(cache, root):
    (cache / "preprocessor.json").write_text("{\"version\": 2,")
    return r"preprocessor\.json:1:15: not valid JSON"


@case("preprocessor.json without vocabularies")
def _(cache, root):
    config = json.loads((cache / "preprocessor.json").read_text())
    del config["vocabularies"]
    (cache / "preprocessor.json").write_text(json.dumps(config))
    return r"preprocessor\.json: not a tfafm preprocessor \(no 'vocabularies'\)"


@case("preprocessor.json of another cache")
def _(cache, root):
    shutil.copy(root / "other" / "preprocessor.json", cache / "preprocessor.json")
    return r"preprocessor\.json is not the preprocessor this cache was encoded with"


@pytest.mark.parametrize("name", list(CASES))
def test_damaged_cache_is_one_line_exit_2_and_changes_nothing(name, caches, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    cache = Path(shutil.copytree(caches / "mine", tmp_path / "cache"))
    expected = CASES[name](cache, caches)
    assert_refused(["train", "--data", f"cache:{cache}", "--config", str(caches / "small.yaml"), "--out", "run",
                    "--quiet"], expected, capsys, tmp_path, caches)


def test_an_intact_cache_is_read_and_its_shards_checked_once(caches):
    from tfafm.data import load_data

    bundle = load_data(f"cache:{caches / 'mine'}", batch_size=64)
    assert (bundle.train_rows, bundle.validation_rows) == (270, 30)
    assert sum(int(labels.shape[0]) for _, labels in bundle.train) == 270
    assert sorted(bundle.cache._verified) == sorted(bundle.cache.files("train") + bundle.cache.files("validation"))
