"""The training loop's specification, in four modules by job (issue 4's loop, split in issue 8).

- test_step.py: the step's clauses against the oracle: TRAIN-LOSS, TRAIN-GRAD, TRAIN-ACCUM,
  TRAIN-PAD (the loss and the gradients of ``lmloss.forward_backward``), and TRAIN-FUSED-HEAD
  (the step through ``lmloss.linear_cross_entropy``, ``lmloss train --loss linear``, against
  the logits step).
- test_resume.py: TRAIN-DETERMINISM and TRAIN-RESUME (bit-identical reruns and resumes), and
  the checkpoint file itself (atomic writes, corrupt or foreign checkpoints).
- test_ddp.py: TRAIN-DDP, the data-parallel step of ``lmloss train --nproc P`` (DDP over gloo)
  against the one-process step on the same global batch (issue 13).
- test_command.py: the ``lmloss train`` command line (its summary, its error messages, --nproc).

conftest.py holds what they share (one thread, the byte model, the corpus) as fixtures,
because they need lmloss: of properties/, only test modules and conftest.py files may import it.
"""
