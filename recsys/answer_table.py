"""`recsys recommend`: one answer of the `Recommender` as a table a person reads in a terminal."""

from __future__ import annotations

from collections.abc import Sequence

from recsys.errors import NotFoundError, RecsysError
from recsys.recommender import POPULARITY, Recommendation, Recommender

MAX_K = 1000
TITLE_WIDTH = 48
CATEGORY_WIDTH = 32
SOURCE_TEXT = {
    "model": "ranked by the model",
    "popularity": "popularity fallback",
    "degraded": "retrieval order (the ranker failed)",
}
NOT_TRAINED_TEXT = "retrieval order (too little click data to train the ranker)"


def recommend_for(recommender: Recommender, *, user_id: str | None = None,
                  history: Sequence[str] | None = None, k: int = 10,
                  explain: bool = False) -> tuple[Recommendation, str]:
    """The answer for a user id or an explicit history (oldest first), and a headline saying
    whose answer it is and where it came from."""
    if not 1 <= k <= MAX_K:
        raise RecsysError(f"--k must be between 1 and {MAX_K}, got {k}")
    if (user_id is None) == (history is None):
        raise RecsysError("give one of USER_ID and --history ID,ID,... (not both, not neither)")
    if history is not None:
        unknown = [item for item in history if item not in recommender.item_rows]
        if unknown:
            raise NotFoundError(f"--history: item id(s) not in bundle {recommender.version}: "
                                f"{', '.join(unknown)}")
        answer = recommender.recommend_for_history([list(history)], k, explain=explain)[0]
        who = f"a history of {len(history)} item(s)"
    else:
        answer = recommender.recommend([user_id], k, explain=explain)[0]
        who = f"user {user_id}"
        if user_id not in recommender.users:
            who += f" (not in bundle {recommender.version}: no history)"
    source = SOURCE_TEXT.get(answer.source, answer.source)
    if answer.source == "degraded" and not recommender.ranker_used:
        source = NOT_TRAINED_TEXT
    return answer, f"{who}: {len(answer.item_ids)} items from {recommender.version}, {source}"


def format_answer(recommender: Recommender, answer: Recommendation, headline: str) -> str:
    """The headline, then rank, item id, title, category, score, source (and why, with reasons)."""
    header = ["rank", "item_id", "title", "category", "score", "source"]
    with_reasons = answer.reasons is not None
    if with_reasons:
        header.append("why")
    rows = []
    for position, (item, score) in enumerate(zip(answer.item_ids, answer.scores, strict=True)):
        row = recommender.item_rows.get(item)
        title = recommender.titles[row] if row is not None else ""
        code = int(recommender.item_categories[row]) if row is not None else -1
        category = recommender.category_names[code] if code >= 0 else ""
        cells = [str(position + 1), item, _shorten(title, TITLE_WIDTH),
                 _shorten(category, CATEGORY_WIDTH, keep_end=True),
                 _score(score, answer.source), answer.source]
        if with_reasons:
            reason = answer.reasons[position] if position < len(answer.reasons) else {}
            cells.append(reason.get("text") or "")
        rows.append(cells)
    if not rows:
        return f"{headline}\n(no items: every item is filtered out or already seen)"
    widths = [max(len(r[c]) for r in [header] + rows) for c in range(len(header))]
    numeric = {0, 4}

    def line(cells: list[str]) -> str:
        padded = [cell.rjust(widths[c]) if c in numeric else cell.ljust(widths[c])
                  for c, cell in enumerate(cells)]
        return "  ".join(padded).rstrip()

    return "\n".join([headline, line(header)] + [line(r) for r in rows])


def _shorten(text: str, width: int, *, keep_end: bool = False) -> str:
    """At most `width` characters; category paths keep their end, the most specific part."""
    text = " ".join(text.split())
    if len(text) <= width:
        return text
    if not keep_end:
        return text[:width - 1] + "\u2026"
    end = text[-(width - 1):]
    return "\u2026" + (end.split(" ", 1)[1] if " " in end else end)


def _score(score: float, source: str) -> str:
    # popularity scores are click counts; the others are ranker or retrieval scores
    return f"{score:.0f}" if source == POPULARITY else f"{score:.4f}"
