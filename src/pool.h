/*
** pool.h: worker threads, their FIFO queue, and the jobs they run.
**
** A Job is what one isolate computes.  It is shared by the Task userdata
** that asked for it and by the pool while queued or running; each holds a
** reference, and the last to let go frees it.  Its fields are guarded by
** the pool's mutex, except 'in' (the worker's alone once the job is taken)
** and 'out' (the worker's until the status is final, then the caller's:
** transfer on exit).  'status' is written under the mutex but atomic, so
** that a waiter can watch it without the lock (a release store of a final
** status publishes 'out').
*/
#ifndef pool_h
#define pool_h

#include <pthread.h>
#include <stdatomic.h>

#include "buffer.h"

typedef enum JobStatus {
  JOB_NEW, JOB_QUEUED, JOB_RUNNING, JOB_DONE, JOB_FAILED
} JobStatus;

typedef struct Job {
  struct Job *next;		/* in the queue */
  int refs;
  _Atomic int status;		/* a JobStatus */
  unsigned long id;
  pthread_cond_t ended;		/* broadcast when status becomes final */
  Buffer in;			/* package paths, then the function and arguments */
  Buffer out;			/* results, or the failure record (codec_failure) */
} Job;

typedef struct Pool Pool;

Pool *pool_default (void);
int pool_cpus (void);

Job *job_new (void);
void job_release (Pool *p, Job *j);
void pool_submit (Pool *p, Job *j);
void pool_await (Pool *p, Job *j);
JobStatus pool_status (Job *j);

#endif
