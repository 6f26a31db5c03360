"""The curate semantics as one DuckDB query over the lake's Parquet: the floor a data engineer would write.

    from benchmarks.curate_duckdb import duckdb_counts
    counts = duckdb_counts(parquet_files, CurateConfig(), threads=2)   # the same dict as stats["counts"]

Keys: NFC (`nfc_normalize`), whitespace runs folded to one space (RE2 `\\s+`, as Arrow's regex does),
ends trimmed of Unicode whitespace (a regex class matching Arrow's `utf8_trim_whitespace`). Then the
same stages as `ingest.curate.rules.resolve`: first row per event_id, latest vote per (example, user),
majority with ties dropped, the empty / too-long filters, and the train/eval split by a hash of the
prompt key (at least `eval_examples` of the lowest draws held out). DuckDB has no function computing
thumbs' split hash (a polynomial over the UTF-8 bytes with a splitmix64 finaliser,
`ingest.curate.keys.stable_hash`), so that one step is a vectorised Python UDF over Arrow arrays calling
`ingest.curate.keys.unit_interval`; everything else is native SQL. One difference
by design: thumbs drops re-delivered event ids per hash bucket of the example, this query over the
whole lake (the same for re-deliveries, which repeat the example).
"""

from __future__ import annotations

import duckdb
import pyarrow as pa

from ingest.curate.rules import _SPLIT_SALT, MAX_EVAL_SHARE, CurateConfig
from ingest.curate.keys import unit_interval

_WS = r"[\s\x{0B}\x{1C}-\x{1F}\x{85}\p{Z}]"
_QUERY = r"""
WITH
raw AS (SELECT event_id, "timestamp", user_id, source, source_line, prompt, completion, desirable
        FROM read_parquet($files)),
keyed AS (SELECT *, array_to_string(list_transform(prompt, lambda m: m.role || chr(31) || norm(m.content)), chr(30))
                    AS pkey,
                 coalesce(user_id, 'event:' || event_id) AS voter FROM raw),
dedup AS (SELECT *, pkey || chr(29) || norm(completion) AS ex FROM keyed
          QUALIFY row_number() OVER (PARTITION BY event_id ORDER BY "timestamp", source, source_line) = 1),
latest AS (SELECT * FROM dedup
           QUALIFY row_number() OVER (PARTITION BY ex, voter ORDER BY "timestamp" DESC, event_id DESC) = 1),
per_example AS (SELECT *, sum(desirable::INT) OVER w AS up, count(*) OVER w AS n,
                       row_number() OVER (PARTITION BY ex ORDER BY "timestamp" DESC, event_id DESC) AS rn
                FROM latest WINDOW w AS (PARTITION BY ex)),
labelled AS (SELECT *, n - up AS down, up * 2 <> n AS keep, up * 2 > n AS label,
                    length(norm(completion)) = 0
                      OR coalesce(list_sum(list_transform(prompt, lambda m: length(norm(m.content)))), 0) = 0 AS empty,
                    coalesce(list_sum(list_transform(prompt, lambda m: length(m.content))), 0) > $max_prompt
                      OR length(completion) > $max_completion AS too_long
             FROM per_example WHERE rn = 1),
drawn AS (SELECT *, keep AND NOT empty AND NOT too_long AS kept, thumbs_unit(pkey || $salt) AS draw FROM labelled),
-- the holdout: eval_fraction, raised to the k-th lowest draw of the kept examples (rules.eval_cut)
cut AS (SELECT coalesce(max(draw), -1) AS kth FROM (
          SELECT draw FROM drawn WHERE kept ORDER BY draw
          LIMIT least($eval_examples, floor((SELECT count(*) FILTER (kept) FROM drawn) * $max_share)::BIGINT))),
final AS (SELECT drawn.*, draw < $eval_fraction OR draw <= cut.kth AS is_eval FROM drawn, cut)
SELECT (SELECT count(*) FROM raw) AS events_in, (SELECT count(*) FROM dedup) AS deduped,
       (SELECT count(*) FROM latest) AS votes, count(*) AS examples,
       count(*) FILTER (up > 0 AND down > 0) AS examples_with_conflicting_votes,
       count(*) FILTER (NOT keep) AS dropped_tie,
       count(*) FILTER (keep AND label <> desirable) AS relabelled_by_majority,
       count(*) FILTER (keep AND empty) AS dropped_empty,
       count(*) FILTER (keep AND NOT empty AND too_long) AS dropped_too_long,
       count(*) FILTER (kept AND NOT is_eval) AS train, count(*) FILTER (kept AND NOT is_eval AND label) AS train_desirable,
       count(*) FILTER (kept AND is_eval) AS eval, count(*) FILTER (kept AND is_eval AND label) AS eval_desirable
FROM final
"""


def _thumbs_unit(keys: pa.Array) -> pa.Array:
    return pa.array(unit_interval(keys))


def duckdb_counts(files: list[str], config: CurateConfig, threads: int | None = None) -> dict[str, int]:
    """The counts `curate` puts in stats.json, from one query (majority policy only, vote caps off: they drop
    nothing, and their counts are 0)."""
    if config.policy != "majority":
        raise ValueError("the DuckDB floor implements the majority policy only")
    if config.max_user_share < 1.0 or config.max_example_votes:
        raise ValueError("the DuckDB floor implements no vote caps (max_user_share, max_example_votes)")
    con = duckdb.connect()
    if threads:
        con.execute(f"SET threads = {int(threads)}")
    con.execute(f"CREATE MACRO norm(t) AS regexp_replace(regexp_replace(nfc_normalize(t), '\\s+', ' ', 'g'), "
                f"'^{_WS}+|{_WS}+$', '', 'g')")
    con.create_function("thumbs_unit", _thumbs_unit, ["VARCHAR"], "DOUBLE", type="arrow")
    row = con.execute(_QUERY, {"files": files, "salt": _SPLIT_SALT, "eval_fraction": config.eval_fraction,
                               "eval_examples": config.eval_examples, "max_share": MAX_EVAL_SHARE,
                               "max_prompt": config.max_prompt_chars,
                               "max_completion": config.max_completion_chars}).fetchone()
    names = [d[0] for d in con.description]
    r = dict(zip(names, (int(v) for v in row)))
    counts = {
        "events_in": r["events_in"], "removed_duplicate_event_id": r["events_in"] - r["deduped"],
        "removed_superseded_vote": r["deduped"] - r["votes"], "votes": r["votes"], "examples": r["examples"],
        "removed_merged_into_example": r["votes"] - r["examples"],
        **{k: r[k] for k in ("examples_with_conflicting_votes", "dropped_tie", "relabelled_by_majority",
                             "dropped_empty", "dropped_too_long", "train", "train_desirable", "eval",
                             "eval_desirable")},
    }
    counts.update(dropped_user_cap=0, dropped_example_cap=0)  # the caps are off (checked above)
    counts["train_undesirable"] = r["train"] - r["train_desirable"]
    counts["eval_undesirable"] = r["eval"] - r["eval_desirable"]
    return dict(sorted(counts.items()))
