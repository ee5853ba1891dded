"""The feature-shard schema: tensors round trips, metadata, validator errors, sizing, other readers."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from recaption.encoder import schema as S
from recaption.errors import ConfigError

HIDDEN = 8


def meta(**image_kw: object) -> S.FeatureMetadata:
    image = {
        "model_id": "tiny-vae",
        "revision": None,
        "latent_channels": 4,
        "scale_factor": 0.18215,
        "dtype": "float16",
        "resolutions": [256],
    }
    image.update(image_kw)
    return S.FeatureMetadata(
        preset="alpha",
        text=S.TextMeta("tiny-t5", None, HIDDEN, "bfloat16", 12, True, ["dense"]),
        image=S.ImageMeta(**image),  # type: ignore[arg-type]
    )


def make_table(n: int = 5, m: S.FeatureMetadata | None = None, seed: int = 0) -> pa.Table:
    m = m or meta()
    rng = np.random.default_rng(seed)
    rows = []
    buckets = [(256, 256, 1.0), (208, 288, 0.72), (288, 224, 1.29)]
    for i in range(n):
        h, w, ratio = buckets[i % 3]
        n_tok = int(rng.integers(1, 13))
        row = {
            "key": f"k{i}",
            "image_uri": f"/data/img{i}.jpg",
            "image_member": "",
            "image_offset": -1,
            "image_length": -1,
            "width": 640,
            "height": 480,
            **S.text_row(
                "dense",
                rng.standard_normal((n_tok, HIDDEN)).astype(np.float32),
                text=f"caption {i}",
                truncated=False,
                dtype="bfloat16",
            ),
            **S.image_row(
                256,
                rng.standard_normal((8, h // 8, w // 8)).astype(np.float16),
                bucket_hw=(h, w),
                ratio=ratio,
                crop=[3, 0, h, w],
                resized_hw=(h + 6, w),
            ),
        }
        rows.append(row)
    return pa.Table.from_pylist(rows, schema=S.feature_schema(metadata=m))


# -- tensors -------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_pack_unpack_round_trip_numpy_and_torch(dtype: str) -> None:
    a = np.random.default_rng(0).standard_normal((3, 5, 7)).astype(dtype)
    buf = S.pack_tensor(a)
    assert len(buf) == a.nbytes
    np.testing.assert_array_equal(S.unpack_tensor(buf, a.shape, dtype), a)
    t = S.unpack_tensor(buf, a.shape, dtype, to="torch")
    assert str(t.dtype) == f"torch.{dtype}"
    assert S.pack_tensor(torch.from_numpy(a)) == buf


def test_bfloat16_is_stored_as_its_raw_bit_pattern() -> None:
    x = torch.randn(4, 6).to(torch.bfloat16)
    buf = S.pack_tensor(x)
    assert buf == x.view(torch.int16).numpy().tobytes()
    back = S.unpack_tensor(buf, (4, 6), "bfloat16", to="torch")
    assert back.dtype == torch.bfloat16
    assert torch.equal(back, x)
    np.testing.assert_array_equal(S.unpack_tensor(buf, (4, 6), "bfloat16"), x.float().numpy())
    # numpy float32 -> bfloat16 rounds to nearest even exactly like torch
    f = np.random.default_rng(1).standard_normal(1000).astype(np.float32) * 1e3
    assert S.pack_tensor(f, "bfloat16") == S.pack_tensor(torch.from_numpy(f), "bfloat16")
    bits = S.float32_to_bfloat16_bits(f)
    assert S.pack_tensor(bits, "bfloat16") == bits.tobytes()


def test_big_endian_arrays_are_written_little_endian() -> None:
    a = np.arange(6, dtype=">f4").reshape(2, 3)
    np.testing.assert_array_equal(S.unpack_tensor(S.pack_tensor(a), (2, 3), "float32"), a.astype("<f4"))


def test_unpack_refuses_a_wrong_size_and_unknown_dtypes() -> None:
    with pytest.raises(ValueError, match=r"has 10 bytes; shape \(2, 3\) of float16 needs 12 bytes"):
        S.unpack_tensor(b"\0" * 10, (2, 3), "float16")
    with pytest.raises(ConfigError, match="tensor dtype"):
        S.unpack_tensor(b"", (0,), "int8")
    with pytest.raises(ConfigError, match="tensor dtype"):
        S.pack_tensor(np.zeros(2), "float64")


# -- schema and metadata ----------------------------------------------------------------------------
def test_schema_columns_types_and_metadata_round_trip() -> None:
    m = meta(resolutions=[512, 256])
    schema = S.feature_schema(metadata=m)
    names = schema.names
    assert names[:7] == list(S.IDENTITY_COLUMNS)
    assert names[7:11] == ["t5_dense", "t5_dense_len", "t5_dense_truncated", "t5_dense_text"]
    assert names[11] == "vae_256"
    assert "vae_512_crop" in names
    assert schema.field("vae_256").type == pa.binary()
    assert schema.field("vae_256_crop").type == pa.list_(pa.int32(), 4)
    assert schema.field("vae_256_ratio").type == pa.float32()
    assert not schema.field("key").nullable
    assert S.FeatureMetadata.from_schema(schema) == m
    assert S.FeatureMetadata.from_json(m.to_json()) == m
    assert S.tensor_columns(schema) == ["t5_dense", "vae_256", "vae_512"]


def test_caption_field_names_are_checked() -> None:
    with pytest.raises(ConfigError, match="caption field"):
        S.feature_schema(["Dense Caption"], [256])


def test_validator_accepts_a_good_table_and_deep_checks_it() -> None:
    table = make_table()
    assert S.validate(table, deep=True).preset == "alpha"


def test_validator_lists_every_problem() -> None:
    table = make_table()
    bad = table.drop_columns(["vae_256_crop"]).set_column(
        table.schema.get_field_index("t5_dense_len"),
        "t5_dense_len",
        table.column("t5_dense_len").cast(pa.int64()),
    )
    with pytest.raises(S.FeatureSchemaError) as err:
        S.validate(bad, where="part-00000.parquet")
    text = str(err.value)
    assert "part-00000.parquet does not follow the feature-shard schema" in text
    assert "missing column(s) ['vae_256_crop']" in text
    assert "column 't5_dense_len' is int64, expected int32" in text


def test_validator_requires_the_metadata() -> None:
    table = make_table().replace_schema_metadata({})
    with pytest.raises(S.FeatureSchemaError, match="no 'recaption' key-value metadata"):
        S.validate(table)


def test_deep_validation_catches_wrong_sizes_and_buckets() -> None:
    table = make_table(3)
    blobs = table.column("vae_256").to_pylist()
    blobs[1] = blobs[1][:-2]
    ratios = table.column("vae_256_ratio").to_pylist()
    ratios[2] = 0.5
    bad = table.set_column(
        table.schema.get_field_index("vae_256"), table.schema.field("vae_256"), pa.array(blobs)
    )
    i = bad.schema.get_field_index("vae_256_ratio")
    bad = bad.set_column(i, bad.schema.field(i), pa.array(ratios, pa.float32()))
    with pytest.raises(S.FeatureSchemaError) as err:
        S.validate(bad, deep=True)
    text = str(err.value)
    assert "row 1 (key 'k1') at 256: vae_256 has 14974 bytes, (2C=8, 208/8, 288/8) needs 14976" in text
    assert "row 2 (key 'k2') at 256: bucket 288x224 with ratio 0.5 is not in ASPECT_RATIO_256" in text
    tokens = table.column("t5_dense").to_pylist()
    tokens[0] = tokens[0] + b"\0\0"
    bad = table.set_column(
        table.schema.get_field_index("t5_dense"), table.schema.field("t5_dense"), pa.array(tokens)
    )
    with pytest.raises(S.FeatureSchemaError, match=r"row 0 \(key 'k0'\): t5_dense has"):
        S.validate(bad, deep=True)


def test_mixed_metadata_is_refused_naming_files_and_fields() -> None:
    a, b = meta(), meta(model_id="other-vae")
    b.text.max_length = 300  # type: ignore[union-attr]
    assert S.check_compatible({"x.parquet": a, "y.parquet": meta()}) == a
    with pytest.raises(S.MixedFeaturesError) as err:
        S.check_compatible({"x.parquet": a, "y.parquet": b})
    text = str(err.value)
    assert "y.parquet differs from x.parquet" in text
    assert "text.max_length: 12 vs 300" in text
    assert "image.model_id: 'tiny-vae' vs 'other-vae'" in text
    # the resolution list may differ; stored dtypes may not (same width, other numbers)
    assert not S.metadata_differences(a, meta(resolutions=[256, 512]))
    assert set(S.metadata_differences(a, meta(dtype="bfloat16"))) == {"image.dtype"}


# -- writing and shard size --------------------------------------------------------------------------
def test_fast_write_options_leave_tensors_uncompressed(tmp_path) -> None:
    table = make_table(6)
    path = str(tmp_path / "part-00000.parquet")
    sizes = S.write_feature_table(path, table, S.ShardSizePolicy(max_rows=4))
    assert sizes == [4, 2]
    md = pq.ParquetFile(path).metadata
    assert md.num_row_groups == 2
    cols = {
        md.row_group(0).column(j).path_in_schema: md.row_group(0).column(j) for j in range(md.num_columns)
    }
    assert cols["vae_256"].compression == "UNCOMPRESSED"
    assert cols["t5_dense"].compression == "UNCOMPRESSED"
    assert not cols["vae_256"].is_stats_set
    assert cols["key"].compression == "ZSTD"
    back = pq.read_table(path)
    assert back.equals(table)
    assert S.validate_file(path, deep=True) == meta()


def test_size_policy_splits_deterministically_by_rows_and_bytes() -> None:
    sizes = [100, 100, 300, 50, 50, 50, 500]
    assert S.ShardSizePolicy(max_bytes=250).plan(sizes) == [(0, 2), (2, 3), (3, 6), (6, 7)]
    assert S.ShardSizePolicy(max_rows=3).plan(sizes) == [(0, 3), (3, 6), (6, 7)]
    assert S.ShardSizePolicy(max_rows=2, max_bytes=150).plan(sizes) == [
        (0, 1),
        (1, 2),
        (2, 3),
        (3, 5),
        (5, 6),
        (6, 7),
    ]
    assert S.ShardSizePolicy().plan(sizes) == [(0, 7)]
    assert S.ShardSizePolicy().plan([]) == [(0, 0)]
    files = S.ShardSizePolicy(max_rows=3, split="files")
    assert files.file_names(7, 2) == ["part-00007-000.parquet", "part-00007-001.parquet"]
    assert S.ShardSizePolicy(max_rows=3).file_names(7, 3) == ["part-00007.parquet"]
    with pytest.raises(ConfigError, match="shard split"):
        S.ShardSizePolicy(split="bytes")
    table = make_table(4)
    assert S.row_nbytes(table) == [
        len(table.column("t5_dense")[i].as_py()) + len(table.column("vae_256")[i].as_py()) for i in range(4)
    ]


# -- other readers, without our code ---------------------------------------------------------------
def test_pandas_polars_duckdb_and_datasets_read_a_shard(tmp_path) -> None:
    table = make_table(5)
    folder = tmp_path / "features"
    folder.mkdir()
    path = folder / "part-00000.parquet"
    S.write_feature_table(str(path), table)
    want = table.column("vae_256").to_pylist()

    import pandas as pd

    df = pd.read_parquet(folder)
    assert list(df["key"]) == [f"k{i}" for i in range(5)]
    assert list(df["vae_256"]) == want

    import polars as pl

    pf = pl.read_parquet(path)
    assert pf["vae_256"].to_list() == want
    assert pf["vae_256_crop"].to_list()[0] == [3, 0, 256, 256]

    import duckdb

    con = duckdb.connect()
    got = con.execute(
        f"SELECT key, octet_length(vae_256), t5_dense_len FROM read_parquet('{path}') ORDER BY key"
    ).fetchall()
    assert [g[1] for g in got] == [len(b) for b in want]

    import datasets

    ds = datasets.load_dataset("parquet", data_files=str(path), split="train", cache_dir=str(tmp_path / "hf"))
    assert ds.num_rows == 5
    assert ds[1]["vae_256"] == want[1]
    assert ds[1]["vae_256_h"] == 208
