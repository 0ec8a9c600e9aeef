"""Report quality in the running node: draft labels, urgent flags and live agreement.

* :mod:`node.quality.labels` — labelling a draft: CheXpert labels, the coded observations
  of the draft SR and the urgent flags a site configures;
* :mod:`node.quality.agreement` — agreement, precision and recall of drafts against the
  reports radiologists signed (plain arithmetic);
* :mod:`node.quality.records` — recording agreement at sign-off and reading it back over
  windows, with the low-agreement alert.
"""
