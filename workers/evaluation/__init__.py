"""Report quality: the CheXpert-style labeler, text metrics and the evaluation harness."""
