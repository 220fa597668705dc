// lidvae-book (issue 21): the column headers of cell-output tables (pandas) may break after an underscore
// ("r_hat_ | aligned_ | max"), so that a wide table fits the text column without breaking a word inside.
// Cells of words (a verdict, a setting) may wrap between words; cells of numbers never wrap (lidvae.css).
// Checked by tests/test_book_html.py (a 1280 x 900 window).
document.addEventListener("DOMContentLoaded", () => {
  for (const td of document.querySelectorAll("div.cell_output table.dataframe td")) {
    if (/[A-Za-z]{2,}/.test(td.textContent) && /\s/.test(td.textContent.trim())) td.style.whiteSpace = "normal";
  }
  for (const th of document.querySelectorAll("div.cell_output table.dataframe th")) {
    for (const node of [...th.childNodes]) {
      if (node.nodeType !== Node.TEXT_NODE || !node.textContent.includes("_")) continue;
      const parts = node.textContent.split("_");
      const pieces = document.createDocumentFragment();
      parts.forEach((part, i) => {
        pieces.append(i < parts.length - 1 ? part + "_" : part);
        if (i < parts.length - 1) pieces.append(document.createElement("wbr"));
      });
      node.replaceWith(pieces);
    }
  }
});
