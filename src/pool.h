/*
** pool.h: worker threads, their FIFO queue, and the jobs they run.
**
** A Job is what one isolate computes.  It is shared by the Task userdata
** that asked for it and by the pool while queued or running; each holds a
** reference, and the last to let go frees it.  Its input belongs to the
** submitter until pool_submit, then to the worker that runs it; its output
** to that worker until the job has ended, then to whoever takes it
** (job_take_output: transfer on exit).  Other files see a Job only
** through these functions.
*/
#ifndef pool_h
#define pool_h

#include <stddef.h>

#include "buffer.h"

typedef enum JobStatus {
  JOB_NEW, JOB_QUEUED, JOB_RUNNING, JOB_DONE, JOB_FAILED
} JobStatus;

typedef struct Job Job;
typedef struct Pool Pool;

/* the default pool (started on first use), or NULL if it cannot start */
Pool *pool_default (void);
int pool_cpus (void);

/* a new job for an isolate nested 'depth' deep, or NULL (no memory) */
Job *job_new (int depth);
Buffer *job_input (Job *j);
unsigned long job_id (Job *j);
JobStatus job_status (Pool *p, Job *j);
/* once the job has ended: move its output (results or failure record) */
void job_take_output (Job *j, Buffer *dst);
void job_release (Pool *p, Job *j);

void pool_submit (Pool *p, Job *j);

/* bytes of C stack left to a thread of a pool ((size_t)-1 elsewhere) */
size_t pool_stackleft (void);

/*
** Wait up to 'ms' milliseconds for 'j' to end; true if it has.  With
** 'runs', a worker of the pool that waits for a job still in the queue
** runs it itself (or, when its own C stack runs low, has a new thread run
** it), so that nested isolates never deadlock.  A caller with a deadline
** passes 0: it could not be back in time, and it must not start a thread
** per job it polls.
*/
int pool_wait (Pool *p, Job *j, long ms, int runs);

#endif
