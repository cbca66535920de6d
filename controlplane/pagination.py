from __future__ import annotations

from rest_framework.pagination import PageNumberPagination


class Pagination(PageNumberPagination):
    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 500
    invalid_page_message = (
        "There is no page {page_number!r}: {message}. Pages are numbered from 1; follow the answer's "
        "'next' and 'previous' links, or divide its 'count' by page_size (50 unless given, at most 500)."
    )


class Counted:
    """Rows whose number is known already (a kept count), for Django's Paginator: no COUNT(*) query.

    Paginator asks `count()` for the total and slices for the page; both pages and the API
    paginate through it.
    """

    def __init__(self, rows, count: int):
        self.rows = rows
        self._count = count

    def count(self) -> int:
        return self._count

    def __len__(self) -> int:
        return self._count

    def __getitem__(self, index):
        return self.rows[index]

    def __iter__(self):
        return iter(self.rows)
