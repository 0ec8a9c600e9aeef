"""The language an SR declares: RFC 5646 tags the node writes, with their meanings.

Every SR carries "Language of Content Item and Descendants" (TID 1204, concept
(121049, DCM)) coded in the RFC5646 scheme. The site chooses it with
``[reports] language``; :func:`language_code` validates a tag and gives its code.
"""

from __future__ import annotations

from node.reports.sr_template import CodeSpec, ReportTemplate, load_report_template

#: The language tags the node writes, with the code meaning (RFC 5646 / PS3.16 CID 5000).
LANGUAGES: dict[str, str] = {
    "en-US": "English (United States)",
    "en-GB": "English (United Kingdom)",
    "de-DE": "German (Germany)",
    "de-AT": "German (Austria)",
    "de-CH": "German (Switzerland)",
    "fr-FR": "French (France)",
    "fr-BE": "French (Belgium)",
    "fr-CA": "French (Canada)",
    "fr-CH": "French (Switzerland)",
    "it-IT": "Italian (Italy)",
    "it-CH": "Italian (Switzerland)",
    "es-ES": "Spanish (Spain)",
    "nl-NL": "Dutch (Netherlands)",
    "nl-BE": "Dutch (Belgium)",
    "pt-PT": "Portuguese (Portugal)",
    "pt-BR": "Portuguese (Brazil)",
    "sv-SE": "Swedish (Sweden)",
    "da-DK": "Danish (Denmark)",
    "nb-NO": "Norwegian Bokmal (Norway)",
    "fi-FI": "Finnish (Finland)",
    "pl-PL": "Polish (Poland)",
}

LANGUAGE_SCHEME = "RFC5646"


def language_code(tag: str) -> CodeSpec:
    """Return the coded language of ``tag``.

    Parameters
    ----------
    tag
        An RFC 5646 tag such as ``"de-DE"``; the case of its parts does not matter.

    Returns
    -------
    CodeSpec
        Value (the tag in its canonical case), scheme ``RFC5646`` and meaning.

    Raises
    ------
    ValueError
        If the tag is not one of :data:`LANGUAGES`.
    """
    canonical = {known.lower(): known for known in LANGUAGES}.get(str(tag).strip().lower())
    if canonical is None:
        raise ValueError(
            f"unsupported report language {tag!r}; use one of {', '.join(LANGUAGES)}"
        )
    return CodeSpec(canonical, LANGUAGE_SCHEME, LANGUAGES[canonical])


def template_in_language(language: str | None) -> ReportTemplate:
    """The packaged report template, declaring ``language`` (its own for ``None``).

    Raises
    ------
    ValueError
        If ``language`` is not supported (see :func:`language_code`).
    """
    template = load_report_template()
    return template.in_language(language_code(language) if language is not None else None)


__all__ = ["LANGUAGES", "LANGUAGE_SCHEME", "language_code", "template_in_language"]
