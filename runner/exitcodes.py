"""Exit statuses of a job run under runner, shared by the job and the schedulers.

75 follows sysexits' EX_TEMPFAIL ("try again later"): the job saved its state and asked to be requeued.
"""

FINISHED = 0
REQUEUED = 75
REQUEUE_FAILED = 76
"""The checkpoint was saved but the scheduler refused or could not be asked to requeue the job."""
REQUEUE_LIMIT = 77
"""The checkpoint was saved, but the job has reached its maximum number of requeues."""
