"""The API's JSON body parser: DRF's, with an answer for bodies nested too deeply to read, and what to send."""

from __future__ import annotations

from rest_framework import parsers
from rest_framework.exceptions import ParseError


class JSONParser(parsers.JSONParser):
    def parse(self, stream, media_type=None, parser_context=None):
        try:
            return super().parse(stream, media_type, parser_context)
        except RecursionError:  # json.loads past Python's recursion limit: DRF catches only ValueError (a 500)
            raise ParseError("JSON parse error - nested too deeply; flatten the body.") from None
        except ParseError as exc:  # where json.loads stopped: say what the body must be
            raise ParseError(
                f"{exc.detail}. The body must be one valid JSON object (double quotes, no trailing commas), "
                "sent with Content-Type: application/json."
            ) from None
