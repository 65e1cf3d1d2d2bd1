"""Real English text shipped inside the ``gensim`` wheel, usable without the Hugging Face hub.

``gensim`` installs its test data under ``gensim/test/test_data``; two files there are real prose:

* ``enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2``: an excerpt of an English
  Wikipedia dump. :func:`embedded_wiki_articles` parses it with gensim's ``extract_pages`` and
  ``filter_wiki`` and cleans it to WikiText-style text: the article title as ``= Title =``, section
  headings as ``= = Heading = =`` (one ``=`` per level), one paragraph per block, blocks joined by
  ``"\\n\\n"``. Templates, references, tables, files/images, galleries, lists, categories, interlanguage
  links, bold/italic quotes and the sections *References*, *See also*, *External links*, *Further
  reading* (and the like) are dropped; links keep their anchor text. Redirects, disambiguation pages and
  stubs (fewer than :data:`MIN_ARTICLE_WORDS` words of paragraph text) are dropped. This is the
  offline stand-in for WikiText-2 (``wiki_embedded``).
* ``lee_background.cor``: 300 Australian news documents (Lee corpus), one per line. Offline stand-in
  for PTB (``news_embedded``).

Fixed fine-tune/test splits (stable: they do not depend on file order or on the Python hash seed):

* wiki: an article is a **test** article iff ``int(sha1(title.encode("utf-8")).hexdigest(), 16) % 5 == 0``
  (about 20%); all other articles are fine-tune articles. Any fine-tune paragraph that also occurs
  verbatim in a test article is removed from the fine-tune side, so the two sides share no paragraph.
* wiki validation (held out only on request, ``data.holdout_val=true``): the fine-tune articles ranked
  by ``sha1(("validation:" + title).encode("utf-8"))``, taken in that order until they hold
  :data:`WIKI_VAL_FRACTION` of the fine-tune words. Their paragraphs are then removed from the other
  fine-tune articles, so fine-tune, validation and test share no paragraph. Without the option the
  fine-tune side is unchanged (the validation articles stay in it).
* news: a document (the stripped line) is a **test** document iff
  ``int(sha1(doc.encode("utf-8")).hexdigest(), 16) % 2 == 0`` (about 50%); identical documents
  therefore always fall on the same side.
* news validation: the fine-tune documents with ``int(sha1(("validation:" + doc).encode("utf-8"))) % 2
  == 0`` (about half of them); removed from the fine-tune side only with ``data.holdout_val=true``.

Parsing takes a few seconds; results are cached per process.
"""

from __future__ import annotations

import bz2
import functools
import hashlib
import importlib.util
import logging
import re
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

WIKI_DUMP_FILE = "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
NEWS_FILE = "lee_background.cor"
MIN_ARTICLE_WORDS = 200
"""Articles with fewer words of paragraph text (headings excluded) after cleaning are dropped."""
MIN_PARAGRAPH_WORDS = 8
"""Shorter lines (captions, table cells, leftovers of removed markup) are dropped."""
WIKI_TEST_MODULUS = 5
NEWS_TEST_MODULUS = 2
WIKI_VAL_FRACTION = 0.15
"""Share of the fine-tune words held out as validation articles (``data.holdout_val``)."""

_DROPPED_SECTIONS = frozenset(
    {
        "references",
        "notes",
        "see also",
        "external links",
        "further reading",
        "bibliography",
        "sources",
        "citations",
        "footnotes",
        "works cited",
        "notes and references",
        "references and notes",
        "footnotes and references",
        "primary sources",
        "secondary sources",
        "gallery",
        "selected works",
        "works",
        "publications",
        "discography",
        "filmography",
    }
)
_HEADING_RE = re.compile(r"^(={2,6})\s*(.*?)\s*\1$")
_PARAGRAPH_END = (".", "!", "?", '"', "'", ")", ":", "\u201d", "\u2019")
_MARKUP_LEFTOVERS = ("[[", "]]", "{{", "}}", "<", ">", "|", "alt=", "File:", "Image:", "Category:")
_LINK_RE = re.compile(r"\[\[([^\[\]|]*)\]\]|\[([^\[\]|]*)\]")  # [[target]] or [text] left by filter_wiki
_TIDY_SUBS = (
    (re.compile(r"'{2,}"), ""),  # bold / italic quotes
    (re.compile(r"\(\s*[,;:\s]*\)"), ""),  # parentheses emptied by removed templates
    (re.compile(r"\(\s*[,;]\s*"), "("),
    (re.compile(r"\s*[,;]\s*\)"), ")"),
    (re.compile(r"[ \t]+([,.;:!?)])"), r"\1"),
    (re.compile(r"\s{2,}"), " "),
)


@dataclass(frozen=True)
class Article:
    """One cleaned article.

    Attributes:
        title: Page title.
        text: WikiText-style text: ``= Title =`` line, ``= = Heading = =`` lines and paragraphs,
            joined by ``"\\n\\n"``.
    """

    title: str
    text: str

    @property
    def paragraphs(self) -> list[str]:
        """Prose blocks of :attr:`text` (headings excluded)."""
        return [b for b in self.text.split("\n\n") if not b.startswith("= ")]

    @property
    def num_words(self) -> int:
        """Whitespace-separated words in :attr:`paragraphs`."""
        return sum(len(p.split()) for p in self.paragraphs)


def gensim_test_data_dir() -> Path:
    """Directory of the text files shipped with ``gensim`` (``gensim/test/test_data``)."""
    spec = importlib.util.find_spec("gensim")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the embedded corpora need the 'gensim' package (pip install gensim)")
    path = Path(next(iter(spec.submodule_search_locations))) / "test" / "test_data"
    if not path.is_dir():
        raise RuntimeError(f"gensim is installed but has no test data folder at {path}")
    return path


def _unwrap_links(line: str) -> str:
    while True:
        new = _LINK_RE.sub(lambda m: m.group(1) if m.group(1) is not None else m.group(2), line)
        if new == line:
            return new
        line = new


def _tidy(line: str) -> str:
    for pattern, repl in _TIDY_SUBS:
        line = pattern.sub(repl, line)
    return line.strip()


def _format_heading(level: int, name: str) -> str:
    return " ".join(["="] * level + [name] + ["="] * level)


def clean_wiki_text(raw: str, title: str) -> str:
    """Turn one page of raw MediaWiki markup into WikiText-style text (see module docstring).

    Args:
        raw: Raw wiki markup of the page.
        title: Page title, emitted as the level-1 heading.

    Returns:
        Blocks joined by ``"\\n\\n"``; only the title heading (or nothing) if no prose survives.
    """
    from gensim.corpora.wikicorpus import filter_wiki

    blocks: list[tuple[int, str]] = [(1, title)]  # (heading level, text); level 0 = paragraph
    skip_below: int | None = None  # inside a dropped section of this level
    for line in filter_wiki(raw, promote_remaining=False).split("\n"):
        stripped = line.strip()
        if not stripped:
            continue
        heading = _HEADING_RE.match(stripped)
        if heading:
            level, name = len(heading.group(1)), _tidy(heading.group(2))
            if skip_below is not None and level > skip_below:
                continue
            skip_below = level if name.lower() in _DROPPED_SECTIONS else None
            if skip_below is None and name:
                blocks.append((level, name))
            continue
        if line.startswith(":"):  # indented block (quotations); formulas fail the prose test below
            line = line.lstrip(":").strip()
        # a leading space marks preformatted text or table remnants; then lists, tables, broken markup
        line = _unwrap_links(line)
        if skip_below is not None or line[:1] in " \t*#;|!{=" or any(m in line for m in _MARKUP_LEFTOVERS):
            continue
        paragraph = _tidy(line)
        if len(paragraph.split()) >= MIN_PARAGRAPH_WORDS and paragraph.endswith(_PARAGRAPH_END):
            blocks.append((0, paragraph))
    kept: list[tuple[int, str]] = []
    for level, text in reversed(blocks):  # drop headings whose section has no prose left
        if level and (not kept or 0 < kept[-1][0] <= level):
            continue
        kept.append((level, text))
    return "\n\n".join(_format_heading(lv, t) if lv else t for lv, t in reversed(kept))


def _sha1_mod(text: str, modulus: int) -> int:
    return int(hashlib.sha1(text.encode("utf-8")).hexdigest(), 16) % modulus


def is_wiki_test_title(title: str) -> bool:
    """Whether the article titled ``title`` belongs to the test side of the embedded wiki split."""
    return _sha1_mod(title, WIKI_TEST_MODULUS) == 0


def is_news_test_document(doc: str) -> bool:
    """Whether a ``lee_background`` document belongs to the test side of the embedded news split."""
    return _sha1_mod(doc.strip(), NEWS_TEST_MODULUS) == 0


@functools.lru_cache(maxsize=1)
def _wiki_articles() -> tuple[Article, ...]:
    from gensim.corpora.wikicorpus import extract_pages

    articles: list[Article] = []
    n_pages = 0
    with bz2.open(gensim_test_data_dir() / WIKI_DUMP_FILE, "rb") as fh:
        for title, raw, _page_id in extract_pages(fh, filter_namespaces=("0",)):
            n_pages += 1
            if raw.lstrip().lower().startswith("#redirect") or title.endswith("(disambiguation)"):
                continue
            article = Article(title=title, text=clean_wiki_text(raw, title))
            if article.num_words >= MIN_ARTICLE_WORDS:
                articles.append(article)
    logger.info("embedded wiki: %d articles kept out of %d pages", len(articles), n_pages)
    return tuple(articles)


def embedded_wiki_articles() -> list[Article]:
    """All cleaned articles of the embedded Wikipedia excerpt, in dump order (cached)."""
    return list(_wiki_articles())


@functools.lru_cache(maxsize=1)
def _wiki_split() -> tuple[tuple[Article, ...], tuple[Article, ...]]:
    articles = _wiki_articles()
    test = tuple(a for a in articles if is_wiki_test_title(a.title))
    test_paragraphs = {p for a in test for p in a.paragraphs}
    finetune: list[Article] = []
    for art in articles:
        if is_wiki_test_title(art.title):
            continue
        blocks = [b for b in art.text.split("\n\n") if b not in test_paragraphs]
        if len(blocks) != art.text.count("\n\n") + 1:
            logger.debug("embedded wiki: dropped paragraphs shared with test articles from %r", art.title)
        finetune.append(Article(title=art.title, text="\n\n".join(blocks)))
    return tuple(finetune), test


def embedded_wiki_split() -> tuple[list[Article], list[Article]]:
    """Fixed disjoint split of :func:`embedded_wiki_articles`.

    Returns:
        ``(finetune, test)`` article lists, each in dump order; see the module docstring for the rule.
    """
    finetune, test = _wiki_split()
    return list(finetune), list(test)


@functools.lru_cache(maxsize=1)
def _wiki_validation_split() -> tuple[tuple[Article, ...], tuple[Article, ...]]:
    finetune, _ = _wiki_split()
    ranked = sorted(finetune, key=lambda a: hashlib.sha1(("validation:" + a.title).encode("utf-8")).digest())
    target, words, titles = WIKI_VAL_FRACTION * sum(a.num_words for a in finetune), 0, set()
    for art in ranked:
        if words >= target:
            break
        titles.add(art.title)
        words += art.num_words
    validation = tuple(a for a in finetune if a.title in titles)
    held_out = {p for a in validation for p in a.paragraphs}
    rest = tuple(
        Article(a.title, "\n\n".join(b for b in a.text.split("\n\n") if b not in held_out))
        for a in finetune
        if a.title not in titles
    )
    return rest, validation


def embedded_wiki_validation_split() -> tuple[list[Article], list[Article]]:
    """The fine-tune side of :func:`embedded_wiki_split` with validation articles held out.

    Returns:
        ``(finetune without validation, validation)`` article lists in dump order; see the module
        docstring for the rule.
    """
    rest, validation = _wiki_validation_split()
    return list(rest), list(validation)


@functools.lru_cache(maxsize=1)
def _news_documents() -> tuple[str, ...]:
    text = (gensim_test_data_dir() / NEWS_FILE).read_text(encoding="utf-8", errors="replace")
    return tuple(d for d in (line.strip() for line in text.splitlines()) if d)


def embedded_news_documents() -> list[str]:
    """All documents of ``lee_background.cor`` in file order (cached)."""
    return list(_news_documents())


def embedded_news_split() -> tuple[list[str], list[str]]:
    """Fixed disjoint split of :func:`embedded_news_documents`.

    Returns:
        ``(finetune, test)`` document lists in file order; see the module docstring for the rule.
    """
    docs = _news_documents()
    return [d for d in docs if not is_news_test_document(d)], [d for d in docs if is_news_test_document(d)]


def is_news_validation_document(doc: str) -> bool:
    """Whether a fine-tune-side ``lee_background`` document is held out as validation."""
    return _sha1_mod("validation:" + doc.strip(), 2) == 0


def embedded_news_validation_split() -> tuple[list[str], list[str]]:
    """The fine-tune side of :func:`embedded_news_split` with validation documents held out.

    Returns:
        ``(finetune without validation, validation)`` document lists in file order.
    """
    finetune, _ = embedded_news_split()
    return (
        [d for d in finetune if not is_news_validation_document(d)],
        [d for d in finetune if is_news_validation_document(d)],
    )
