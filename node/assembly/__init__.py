"""Study assembly: deciding when a study is complete and whether to draft it."""
