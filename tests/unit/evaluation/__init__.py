"""Tests of the report labeler and the evaluation harness."""
