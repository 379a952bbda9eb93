from django.dispatch import Signal

# Sent inside the transaction that stores a job's outputs, with `job` and `outputs`, so
# whatever a receiver writes lands or rolls back together with them.
job_succeeded = Signal()
