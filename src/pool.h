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

#include "lua.h"
#include "buffer.h"
#include "mailbox.h"

typedef enum JobStatus {
  JOB_NEW, JOB_QUEUED, JOB_RUNNING, JOB_DONE, JOB_FAILED, JOB_CANCELLED
} JobStatus;

typedef struct Job Job;
typedef struct Pool Pool;

typedef struct PoolStats {
  int workers, busy, queued;
  unsigned long done, failed, cancelled;
} PoolStats;

/* the default pool (started on first use), or NULL if it cannot start */
Pool *pool_default (void);
int pool_cpus (void);

/* whether a running job is stopped by a signal (else it polls: state.c) */
int pool_cansignal (void);

/*
** A pool of its own: 'size' threads named after 'name' (NULL: none, else
** copied), each isolate's heap capped at 'limit' bytes (0: no cap), 'init'
** (a job input without arguments, moved in; NULL: none) run in every fresh
** state before it gets a job.  NULL if it cannot start.  The caller holds
** one reference; every thread of the pool holds one too.
*/
Pool *pool_new (int size, const char *name, size_t limit, Buffer *init);
void pool_retain (Pool *p);
void pool_release (Pool *p);

/*
** A state whose strings a job's output borrowed (buffer.h), once the
** output is read: the pool's preparer closes it, off the reader's path.
*/
void pool_closelater (Pool *p, lua_State *L);
/* close, on this thread, every state left to close (at the caller's end) */
void pool_closeall (Pool *p);

/*
** Take no more jobs.  Its threads run those queued, then end; wait for
** that up to 'ms' milliseconds (< 0: no limit; 0: do not wait).  True if
** they have all ended.  Never on the default pool.
*/
int pool_close (Pool *p, long ms);
/* cancel every job the pool has, queued or running */
void pool_cancelall (Pool *p);
void pool_stats (Pool *p, PoolStats *s);
/* the name it was given (NULL: none) */
const char *pool_name (Pool *p);
/* one more in each forked child (its parent's jobs are lost there) */
unsigned long pool_epoch (void);
/* NULL if 'p' can take jobs, else why not */
const char *pool_unusable (Pool *p);

/*
** A new job for an isolate nested 'depth' deep, or NULL (no memory);
** with 'listen', somebody may receive its messages (until job_unlisten).
*/
Job *job_new (int depth, int listen);
Buffer *job_input (Job *j);
/* the process's epoch when it was submitted (pool_epoch) */
unsigned long job_epoch (Job *j);
/* its isolate has decoded its input (job_inputread); the caller's may go */
void job_inputread (Job *j);
int job_hasread (Job *j);
/* nobody will take its output (its task's handle was collected) */
void job_orphan (Pool *p, Job *j);
unsigned long job_id (Job *j);
/* the order of its end among all jobs (from 1; 0: it has not ended) */
unsigned long job_endseq (Job *j);
JobStatus job_status (Pool *p, Job *j);
/* once the job has ended: move its output (results or failure record) */
void job_take_output (Job *j, Buffer *dst);
void job_release (Pool *p, Job *j);
/*
** Cancel 'j': a queued job ends at once, a running one is interrupted.
** True if the request came before the job ended: it ends cancelled.
*/
int job_cancel (Pool *p, Job *j);

/*
** Nobody may receive the messages of 'j' any more (its task's handle is
** gone): those held are dropped, later ones too, and so is its
** descriptor (nobody can poll it).
*/
void job_unlisten (Pool *p, Job *j);
/*
** From the isolate that runs 'j': queue the message 'msg' (moved, freed
** in any case), after waiting for room if the mailbox is full and its
** caller may read it.  1: queued; 0: dropped (nobody listens); -1: the
** job was cancelled; -2: no memory.
*/
int job_emit (Pool *p, Job *j, Buffer *msg);
/*
** The oldest message of 'j' into '*mail' (the caller frees it), waiting
** up to 'ms' ms for one: 1 if there was one; 0 if none will come (the
** job has ended); -1 if none came in time.
*/
int job_receive (Pool *p, Job *j, Mail **mail, long ms);
/* a caller begins (+1) or ends (-1) a wait for the end of 'j' outside pool_wait */
void job_awaited (Pool *p, Job *j, int delta);
/* the messages of 'j' not received yet */
size_t job_pending (Pool *p, Job *j);
/* the descriptor that is readable while 'j' has a message or has ended; -1 and errno */
int job_pollfd (Pool *p, Job *j);
/* once 'j' has ended: move its messages and descriptor to 'dst' */
void job_take_mail (Pool *p, Job *j, Mailbox *dst);

/*
** An end set: one descriptor, readable while some of the jobs added to
** it have ended and were not taken yet.  The owner (who makes it) lets
** go of it with endset_release; jobs still running hold it until they end.
*/
typedef struct Endset Endset;
Endset *endset_new (void);
void endset_release (Endset *s);
/* add 'j', known as 'key' (0: no memory); a job that has ended (or NULL: one let go of) is ready at once */
int endset_add (Endset *s, Pool *p, Job *j, void *key);
/* take 'j' (known as 'key') out of the set, ended or not; 0 if it was not there */
int endset_remove (Endset *s, Pool *p, Job *j, void *key);
/* its descriptor (-1 and errno) */
int endset_fd (Endset *s);
/* the key of the job that ended first among those not taken, waiting up to 'ms' ms; NULL: none */
void *endset_take (Endset *s, long ms);

/* queue 'j' (0: the pool takes no jobs, see pool_unusable) */
int pool_submit (Pool *p, Job *j);

/*
** Run 'j' on the calling thread, in a fresh state that the pool prepared,
** for the thread 'caller' (of the state whose main thread is
** 'mainthread') that waits for it; 0 if it cannot (nothing prepared, a
** thread of a pool, too little stack): then submit it.
*/
int pool_runhere (Pool *p, Job *j, lua_State *caller, lua_State *mainthread);

/* bytes of C stack left to the calling thread ((size_t)-1: unknown) */
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

/*
** Jobs of any pool that have ended so far, and a wait of up to 'ms'
** milliseconds until that count is past 'seen': for a caller waiting for
** the first of several jobs to end.
*/
unsigned long pool_ends (void);
void pool_waitends (unsigned long seen, long ms);

#endif
