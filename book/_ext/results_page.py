"""Sphinx extension of the results page (book/results.md): its tables are generated when the book is built.

``{committed-results}`` lists every folder under ``results/`` (:func:`lidvae_mini.book.results.result_rows`);
``{paper-status}`` renders ``book/paper_status.yml`` (:func:`lidvae_mini.book.results.paper_status`). The Markdown they
produce is parsed as MyST, so their ``{ref}`` and ``{doc}`` links are checked like any other (``-W -n``). Every
file they read is a dependency of the page: a new result folder rebuilds it.
"""
from __future__ import annotations

from docutils import nodes
from docutils.statemachine import StringList
from sphinx.util.docutils import SphinxDirective


class _GeneratedMarkdown(SphinxDirective):
    has_content = False

    def generate(self) -> tuple[str, list]:
        raise NotImplementedError

    def run(self):
        text, files = self.generate()
        for f in files:
            self.env.note_dependency(str(f))
        container = nodes.container(classes=["generated-" + self.name])
        self.state.nested_parse(StringList(text.splitlines(), source=self.get_source_info()[0]),
                                self.content_offset, container)
        return [container]


class CommittedResults(_GeneratedMarkdown):
    def generate(self):
        from lidvae_mini.book import results

        base = results.results_dir()
        files = sorted(base.glob("*/*/*")) if base else []
        files += sorted(results.BOOK_DIR.glob("*.md"))
        return results.results_table_markdown(results.result_rows()), files


class PaperStatus(_GeneratedMarkdown):
    def generate(self):
        from lidvae_mini.book import results

        return results.paper_status_markdown(results.paper_status()), [results.PAPER_STATUS_FILE]


def setup(app):
    app.add_directive("committed-results", CommittedResults)
    app.add_directive("paper-status", PaperStatus)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
