"""Rule books on disk: importing CMS's RVU file into a year's book and writing a set of books
(``caretally rules import-rvu``). The decisions are :mod:`projections.rules.fee_import`'s."""
