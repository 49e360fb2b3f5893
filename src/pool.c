/*
** pool.c: the worker threads, their queue, and waiting for a job.
**
** The default pool is the one process-wide object of the core: every
** lua_State that requires the module, in any thread, shares it.  It is
** started on first use, its threads run until the process ends, and it is
** guarded by its mutex.  A process forked after it started has none of
** its threads: the child's pool starts again on first use, and the jobs
** that the parent's threads had (queued or running) fail in the child.
**
** A worker that waits for a job still in the queue takes that job and runs
** it itself.  So a task that spawns and awaits tasks of its own never waits
** for a slot held by itself or by a task waiting on it: nested isolates do
** not deadlock, whatever the pool size.  Each such run nests on the
** worker's C stack, so a worker whose stack is running low has a new
** thread run the job instead (with a stack of its own), and waits for it.
**
** Worker threads block asynchronous signals (SIGINT, SIGTERM, ...): those
** are for the threads of the program, which can handle them in Lua.  They
** take one signal of their own, a real-time signal that nobody else
** handles, chosen when the first pool starts: cancelling a running job
** sends it to the thread that runs the job (state.c tells what follows).
**
** Pools of their own (isolate.pool) work the same way, with a name, a
** memory limit and an init function for their isolates.  Each pool's
** preparer thread makes fresh states, init included, ahead of the jobs
** that take them.  A pool of one's own is counted by references (its
** handle, each task, each thread) and freed by the last.
*/
#define _GNU_SOURCE		/* glibc: pthread_setname_np, pthread_getattr_np */
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "isolate.h"
#include "mailbox.h"
#include "message.h"
#include "pool.h"
#include "state.h"


struct Job {
  struct Job *next, *prev;	/* in the queue, or in the list of running jobs */
  struct Job *inner;		/* the job it waits for, run by its own thread */
  struct Job *outer;		/* the job that waits for this one so */
  int refs;
  _Atomic int status;		/* a JobStatus: written under the mutex */
  atomic_int cancel;		/* a cancel was asked for before the end */
  atomic_int inputread;		/* its isolate has decoded its input */
  int orphaned;			/* nobody will take its output (job_orphan) */
  int onthread;			/* 'thread' runs it (under the mutex) */
  pthread_t thread;
  unsigned long id;
  atomic_ulong endseq;		/* when it ended, among all jobs (0: not yet) */
  unsigned long epoch;		/* the process' epoch when it was submitted */
  int depth;			/* nesting of its isolate */
  pthread_cond_t ended;		/* broadcast when status becomes final */
  pthread_cond_t mailed;	/* broadcast when a message comes, when room
				   comes for one, and at the end */
  Buffer in;			/* package paths, then the function and arguments */
  Buffer out;			/* results, or the failure record */
  Mailbox mail;			/* its messages, not received yet; its bell */
  atomic_size_t nmail;		/* mail.n, for a receiver that spins */
  int emitwaits;		/* its isolate waits for room in 'mail' */
  int listened;			/* somebody may receive its messages */
  int waiters;			/* callers blocked until it ends, and end sets */
  struct Watch *watches;	/* end sets to tell of its end */
};

typedef struct Worker Worker;

struct Pool {
  pthread_mutex_t mu;
  pthread_cond_t work;		/* signalled when a job is queued */
  pthread_cond_t gone;		/* broadcast when a thread of the pool ends */
  pthread_cond_t prep;		/* signalled when the stash wants a state */
  pthread_cond_t prepared;	/* broadcast when the preparer stops making one */
  int preparing;		/* the preparer makes a state (unlocked) */
  int closers;			/* threads that close a state of 'toclose' (unlocked) */
  Job *head, *tail;		/* the queue, FIFO */
  Job *running;			/* jobs that run (doubly linked) */
  int sleeping;			/* workers waiting on 'work' */
  int size;			/* worker threads */
  int threads;			/* threads of the pool alive (lent ones too) */
  int refs;			/* 0 for the default pool: it is never freed */
  int closing;			/* takes no more jobs */
  pid_t pid;			/* the process that made it (pool_new) */
  unsigned long nextid;
  struct Pool *nextpool, *prevpool;	/* in the list of pools of one's own */
  char *name;			/* NULL for the default pool */
  size_t limit;			/* bytes of heap per isolate (0: no limit) */
  Buffer init;			/* the init's job input (empty: none) */
  lua_State **stash;		/* fresh states, made by idle workers, for jobs */
  int nstash, stashcap;		/* and callers (runhere): a worker's and a few */
  int making;			/* states that idle workers make for the stash */
  lua_State *toclose;		/* states to close: of callers' jobs, and states
				   whose strings outputs borrowed (state_next) */
  int ntoclose;
  int queued, busy;
  unsigned long done, failed, cancelled;
  atomic_int stopinit;		/* inits under way stop (pool_cancelall) */
  Worker **workers;		/* its threads while they run, 'size' + 1 slots */
};

static Pool default_pool = {.mu = PTHREAD_MUTEX_INITIALIZER,
                            .work = PTHREAD_COND_INITIALIZER,
                            .gone = PTHREAD_COND_INITIALIZER,
                            .prep = PTHREAD_COND_INITIALIZER,
                            .prepared = PTHREAD_COND_INITIALIZER};
static pthread_mutex_t start_mu = PTHREAD_MUTEX_INITIALIZER;
static atomic_int started;	/* the default pool's threads were started */

/*
** One more in each forked child: a job of another epoch is the parent's.
** The pools of one's own are listed, so that a fork finds them all (none
** of their threads are in the child).
*/
static unsigned long epoch;
static Pool *pools;
static pthread_mutex_t pools_mu = PTHREAD_MUTEX_INITIALIZER;

/*
** What a thread of a pool knows of itself, through a pthread key, not
** _Thread_local: the dynamic TLS of a dlopen'ed library is beyond what
** some tools walk (LeakSanitizer's tracer crashes on it).
*/
struct Worker {
  Pool *pool;
  const char *stacklow;		/* lowest address of its stack (NULL: unknown) */
  lua_State *_Atomic shown;	/* the state whose job runs now (state_run) */
  Job *job;			/* the job it runs now (the innermost) */
  pthread_t thread;
  int slot;			/* in its pool's 'workers' (-1: none) */
};

static pthread_key_t worker_key;
static pthread_once_t key_once = PTHREAD_ONCE_INIT;
static int cancel_signal;	/* 0: none could be had */

/* jobs ended so far in all pools, for waits on the first of several */
static atomic_ulong ends;
static atomic_int ends_waiters;
static pthread_mutex_t ends_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t ends_cv;

/* callers that run their own jobs, and the watchdog that watches them */
typedef struct Inline Inline;
static pthread_mutex_t watch_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t watch_cv = PTHREAD_COND_INITIALIZER;
static Inline *watched;		/* callers running their own jobs */
static int watchdog;		/* 1: started; -1: cannot start */
static int ncpus;		/* pool_cpus() when the first pool started */
static int watch_asleep;	/* it waits for a caller's run, without a timeout */
static unsigned long watch_runs;	/* callers' runs so far */


/* the CPUs this process may run on (taskset, cgroup cpusets), or online */
int pool_cpus (void) {
  long n;
#if defined(__linux__) && defined(CPU_COUNT)
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0 && CPU_COUNT(&set) > 0)
    return CPU_COUNT(&set);
#endif
  n = sysconf(_SC_NPROCESSORS_ONLN);
  return n < 1 ? 1 : (int)n;
}


static int isfinal (int s) {
  return s == JOB_DONE || s == JOB_FAILED || s == JOB_CANCELLED;
}

static int job_ended (Job *j) {
  return isfinal(atomic_load_explicit(&j->status, memory_order_acquire));
}

/*
** The clock of timed waits (pthread_cond_timedwait): the monotonic one,
** for the condition variables made with cond_clock; macOS has no
** pthread_condattr_setclock, and its waits take the real-time clock.
*/
#if defined(__APPLE__)
#define WAIT_CLOCK	CLOCK_REALTIME
#else
#define WAIT_CLOCK	CLOCK_MONOTONIC
#endif

static void cond_clock (pthread_condattr_t *ca) {
  pthread_condattr_init(ca);
#if !defined(__APPLE__)
  pthread_condattr_setclock(ca, WAIT_CLOCK);
#endif
}

/* the time 'ms' milliseconds from now on 'clock' (pthread_cond_timedwait) */
static void deadline_on (clockid_t clock, struct timespec *t, long ms) {
  clock_gettime(clock, t);
  t->tv_sec += ms / 1000;
  t->tv_nsec += (ms % 1000) * 1000000L;
  if (t->tv_nsec >= 1000000000L) {
    t->tv_sec++;
    t->tv_nsec -= 1000000000L;
  }
}

/* for the condition variables made with cond_clock */
#define deadline_in(t,ms)	deadline_on(WAIT_CLOCK, t, ms)

static int finished (Pool *p, Job *j);


/*
** Spin until ready(j) or ISOLATE_SPIN_US have passed; true if ready.
** A caller about to sleep until its job ends (or sends a message) spins
** first: waking it costs more than many a small isolate's whole run.  It
** spins only when a core is free for it (fewer busy workers than cores,
** no job queued): else it takes the core that a worker needs.  (Workers
** do not spin for jobs: on a machine with few cores a spinning idle
** worker takes the core that the running job needs, and measured slower.)
*/
static int spin (Job *j, int (*ready) (Job *j)) {
  struct timespec t0, t;
  long i;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  for (i = 1; ; i++) {
    if (ready(j)) return 1;
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
    if (i % 64 == 0) {
      clock_gettime(CLOCK_MONOTONIC, &t);
      if ((t.tv_sec - t0.tv_sec) * 1000000L +
          (t.tv_nsec - t0.tv_nsec) / 1000 >= ISOLATE_SPIN_US)
        return ready(j);
    }
  }
}


/*
** {======================================================
** Jobs
** =======================================================
*/

Job *job_new (int depth, int listen) {
  Job *j = (Job *)calloc(1, sizeof(Job));
  pthread_condattr_t ca;
  int err;
  if (j == NULL) return NULL;
  cond_clock(&ca);		/* for pool_wait */
  err = pthread_cond_init(&j->ended, &ca);
  if (err == 0 && (err = pthread_cond_init(&j->mailed, &ca)) != 0)
    pthread_cond_destroy(&j->ended);
  pthread_condattr_destroy(&ca);
  if (err != 0) {
    free(j);
    return NULL;
  }
  j->refs = 1;
  j->depth = depth;
  j->listened = listen;
  j->mail.bell.rfd = j->mail.bell.wfd = -1;
  atomic_init(&j->nmail, 0);
  atomic_init(&j->status, JOB_NEW);
  atomic_init(&j->cancel, 0);
  atomic_init(&j->endseq, 0);
  return j;
}


Buffer *job_input (Job *j) {
  return &j->in;
}


unsigned long job_epoch (Job *j) {
  return j->epoch;
}


void job_inputread (Job *j) {
  atomic_store_explicit(&j->inputread, 1, memory_order_release);
}


int job_hasread (Job *j) {
  return atomic_load_explicit(&j->inputread, memory_order_acquire);
}


unsigned long job_id (Job *j) {
  return j->id;
}


unsigned long job_endseq (Job *j) {
  return atomic_load_explicit(&j->endseq, memory_order_acquire);
}


void job_take_output (Job *j, Buffer *dst) {
  buffer_move(dst, &j->out);
}


/*
** {------------------------------------------------------
** End sets: one bell for the ends of many jobs
** -------------------------------------------------------
*/

/*
** A job in an end set has a Watch in its list of watches; when it ends,
** the watch moves to the set's list of ended jobs, in the order they end,
** and the set's bell rings until that list is empty.  A set has its own
** mutex, taken under a pool's (a job ends under its pool's mutex), and
** is counted by references: its owner's, and each watch's.
*/
typedef struct Watch {
  struct Watch *next;		/* in its job's list, then in its set's */
  Endset *set;
  void *key;			/* what the owner knows the job by */
} Watch;

struct Endset {
  pthread_mutex_t mu;
  pthread_cond_t cv;		/* broadcast when a job ends */
  Bell bell;			/* rings while 'ended' is not empty */
  Watch *ended, *last;		/* jobs that ended, not taken yet */
  int refs;
  int owned;			/* its owner has not let go */
};


Endset *endset_new (void) {
  Endset *s = (Endset *)calloc(1, sizeof(Endset));
  pthread_condattr_t ca;
  if (s == NULL) return NULL;
  pthread_mutex_init(&s->mu, NULL);
  cond_clock(&ca);
  pthread_cond_init(&s->cv, &ca);
  pthread_condattr_destroy(&ca);
  s->bell.rfd = s->bell.wfd = -1;
  s->refs = s->owned = 1;
  return s;
}


/* one reference less ('s' locked; unlocked on return, maybe freed) */
static void endset_unref (Endset *s) {
  int last = --s->refs == 0;
  pthread_mutex_unlock(&s->mu);
  if (last) {
    bell_close(&s->bell);
    pthread_cond_destroy(&s->cv);
    pthread_mutex_destroy(&s->mu);
    free(s);
  }
}


/* 'w' ended: into its set's list, or freed if nobody owns the set */
static void endset_put (Watch *w) {
  Endset *s = w->set;
  pthread_mutex_lock(&s->mu);
  if (!s->owned) {
    free(w);
    endset_unref(s);
    return;
  }
  w->next = NULL;
  if (s->last == NULL) s->ended = w;
  else s->last->next = w;
  s->last = w;
  bell_set(&s->bell, 1);
  pthread_cond_broadcast(&s->cv);
  pthread_mutex_unlock(&s->mu);
}


/* mutex held: 'j' has ended, its sets are told */
static void tell (Job *j) {
  while (j->watches != NULL) {
    Watch *w = j->watches;
    j->watches = w->next;
    j->waiters--;
    endset_put(w);
  }
}


void endset_release (Endset *s) {
  pthread_mutex_lock(&s->mu);
  s->owned = 0;
  while (s->ended != NULL) {
    Watch *w = s->ended;
    s->ended = w->next;
    free(w);
    s->refs--;			/* (never the last: the owner's is left) */
  }
  s->last = NULL;
  endset_unref(s);
}


int endset_add (Endset *s, Pool *p, Job *j, void *key) {
  Watch *w = (Watch *)malloc(sizeof(Watch));
  if (w == NULL) return 0;
  w->set = s;
  w->key = key;
  pthread_mutex_lock(&s->mu);
  s->refs++;
  pthread_mutex_unlock(&s->mu);
  if (j == NULL) {		/* one that has ended and was let go of */
    endset_put(w);
    return 1;
  }
  finished(p, j);		/* (a job of a forked parent has ended) */
  pthread_mutex_lock(&p->mu);
  if (job_ended(j)) endset_put(w);
  else {
    w->next = j->watches;
    j->watches = w;
    j->waiters++;
    if (mailbox_full(&j->mail)) pthread_cond_broadcast(&j->mailed);	/* an emit */
  }
  pthread_mutex_unlock(&p->mu);
  return 1;
}


int endset_remove (Endset *s, Pool *p, Job *j, void *key) {
  Watch *w = NULL, **link;
  if (j != NULL) {		/* still on its job's list? */
    pthread_mutex_lock(&p->mu);
    for (link = &j->watches; *link != NULL; link = &(*link)->next)
      if ((*link)->set == s && (*link)->key == key) {
        w = *link;
        *link = w->next;
        j->waiters--;
        break;
      }
    pthread_mutex_unlock(&p->mu);
  }
  pthread_mutex_lock(&s->mu);
  if (w == NULL) {		/* then on the set's, if it ended */
    Watch *prev = NULL;
    for (w = s->ended; w != NULL && w->key != key; prev = w, w = w->next) ;
    if (w != NULL) {
      if (prev == NULL) s->ended = w->next;
      else prev->next = w->next;
      if (s->last == w) s->last = prev;
      bell_set(&s->bell, s->ended != NULL);
    }
  }
  if (w == NULL) {
    pthread_mutex_unlock(&s->mu);
    return 0;
  }
  free(w);
  s->refs--;			/* (never the last: the owner's is left) */
  pthread_mutex_unlock(&s->mu);
  return 1;
}


int endset_fd (Endset *s) {
  int fd;
  pthread_mutex_lock(&s->mu);
  fd = bell_fd(&s->bell);
  pthread_mutex_unlock(&s->mu);
  return fd;
}


void *endset_take (Endset *s, long ms) {
  void *key = NULL;
  pthread_mutex_lock(&s->mu);
  if (s->ended == NULL && ms != 0) {
    struct timespec deadline;
    deadline_in(&deadline, ms);
    while (s->ended == NULL &&
           pthread_cond_timedwait(&s->cv, &s->mu, &deadline) != ETIMEDOUT) ;
  }
  if (s->ended != NULL) {
    Watch *w = s->ended;
    if ((s->ended = w->next) == NULL) s->last = NULL;
    key = w->key;
    free(w);
    s->refs--;
    bell_set(&s->bell, s->ended != NULL);
  }
  pthread_mutex_unlock(&s->mu);
  return key;
}

/* }------------------------------------------------------ */


/* the job has ended: count it, tell its waiters; mutex held */
static void publish (Pool *p, Job *j, JobStatus status) {
  if (j->outer != NULL) {
    j->outer->inner = NULL;
    j->outer = NULL;
  }
  if (j->inner != NULL) {	/* a lent one may outlive its waiter */
    j->inner->outer = NULL;
    j->inner = NULL;
  }
  atomic_store_explicit(&j->status, status, memory_order_release);
  mailbox_end(&j->mail);
  tell(j);
  if (status == JOB_DONE) p->done++;
  else if (status == JOB_FAILED) p->failed++;
  else p->cancelled++;
  if (j->epoch == epoch) {	/* see lose() */
    pthread_cond_broadcast(&j->ended);
    pthread_cond_broadcast(&j->mailed);
  }
  atomic_store_explicit(&j->endseq, atomic_fetch_add(&ends, 1) + 1, memory_order_release);
  if (atomic_load(&ends_waiters) > 0) {
    pthread_mutex_lock(&ends_mu);
    pthread_cond_broadcast(&ends_cv);
    pthread_mutex_unlock(&ends_mu);
  }
}


/*
** A job of the parent process that a child sees queued or running: no
** thread of the child runs it.  It fails, without touching its condition
** variable, whose waiters (threads of the parent) do not exist here, nor
** its output, which a thread of the parent may have been writing.
*/
static void lose (Job *j) {		/* mutex held */
  j->out.head = j->out.tail = NULL;
  j->out.total = j->out.borrowed = 0;
  j->out.owner = NULL;		/* (the parent's state: not closed here) */
  message_putplain(&j->out, "error",
    "isolate: the process forked while this task was queued or running; "
    "it runs in the parent process only");
  atomic_store_explicit(&j->status, JOB_FAILED, memory_order_release);
  mailbox_end(&j->mail);	/* (a bell of the child's own: mailbox.h) */
}


/* mutex held: the preparer closes 'L' (a worker of the pool's, or destroy) */
static void closelater (Pool *p, lua_State *L) {
  state_setnext(L, p->toclose);
  p->toclose = L;
  p->ntoclose++;
  pthread_cond_signal(&p->prep);
  if (p->sleeping > 0) pthread_cond_signal(&p->work);	/* an idle worker helps */
}


/* mutex held: the next state to close, or NULL */
static lua_State *toclose (Pool *p) {
  lua_State *L = p->toclose;
  if (L != NULL) {
    p->toclose = state_next(L);
    p->ntoclose--;
  }
  return L;
}


/*
** A closed pool has no preparer left to close it, nor workers: the
** caller closes it.  (destroy() closes what is left when the last
** reference goes.)
*/
void pool_closelater (Pool *p, lua_State *L) {
  int closed;
  pthread_mutex_lock(&p->mu);
  closed = p->closing;
  if (!closed) closelater(p, L);
  pthread_mutex_unlock(&p->mu);
  if (closed) state_close(L);
}


void pool_closeall (Pool *p) {
  struct timespec deadline;
  lua_State *L;
  /* (p->prepared is on the real-time clock: the default pool's is made
     statically) */
  deadline_on(CLOCK_REALTIME, &deadline, ISOLATE_CLOSE_MS);
  pthread_mutex_lock(&p->mu);
  for (;;) {
    if ((L = toclose(p)) != NULL) {
      pthread_mutex_unlock(&p->mu);
      state_close(L);
      pthread_mutex_lock(&p->mu);
    }
    else if (p->closers == 0 ||	/* those being closed by others, a while */
             pthread_cond_timedwait(&p->prepared, &p->mu, &deadline) == ETIMEDOUT)
      break;
  }
  pthread_mutex_unlock(&p->mu);
}


void job_orphan (Pool *p, Job *j) {
  lua_State *L;
  pthread_mutex_lock(&p->mu);
  j->orphaned = 1;		/* (its thread writes 'out' until the end, unlocked) */
  if (isfinal(atomic_load_explicit(&j->status, memory_order_relaxed)) &&
      (L = (lua_State *)j->out.owner) != NULL && j->epoch == epoch) {
    buffer_free(&j->out);	/* success results that nobody will read */
    closelater(p, L);
  }
  pthread_mutex_unlock(&p->mu);
}


static void job_unref (Pool *p, Job *j) {	/* mutex held */
  if (--j->refs == 0) {
    if (j->out.owner != NULL && j->epoch == epoch)	/* (a parent's: not here) */
      closelater(p, (lua_State *)j->out.owner);
    buffer_free(&j->in);
    buffer_free(&j->out);
    mailbox_free(&j->mail);
    if (j->epoch == epoch) {	/* see lose() */
      pthread_cond_destroy(&j->ended);
      pthread_cond_destroy(&j->mailed);
    }
    free(j);
  }
}


void job_release (Pool *p, Job *j) {
  pthread_mutex_lock(&p->mu);
  job_unref(p, j);
  pthread_mutex_unlock(&p->mu);
}


/* has 'j' ended?  In a forked child, a job of the parent has (lose) */
static int finished (Pool *p, Job *j) {
  int ended = job_ended(j);
  if (!ended && j->epoch != epoch) {
    pthread_mutex_lock(&p->mu);
    if (!job_ended(j)) lose(j);
    pthread_mutex_unlock(&p->mu);
    ended = 1;
  }
  return ended;
}


JobStatus job_status (Pool *p, Job *j) {
  finished(p, j);
  return (JobStatus)atomic_load_explicit(&j->status, memory_order_acquire);
}


/* the queue and the list of running jobs; mutex held */
static void enqueue (Pool *p, Job *j) {
  j->next = NULL;
  j->prev = p->tail;
  if (p->tail == NULL) p->head = j;
  else p->tail->next = j;
  p->tail = j;
  p->queued++;
}

static void unlink_queued (Pool *p, Job *j) {
  if (j->prev != NULL) j->prev->next = j->next;
  else p->head = j->next;
  if (j->next != NULL) j->next->prev = j->prev;
  else p->tail = j->prev;
  p->queued--;
}

/* 'j' leaves the queue to run on this thread */
static void start (Pool *p, Job *j) {
  unlink_queued(p, j);
  j->prev = NULL;
  j->next = p->running;
  if (p->running != NULL) p->running->prev = j;
  p->running = j;
  p->busy++;
  j->thread = pthread_self();
  j->onthread = 1;
  atomic_store_explicit(&j->status, JOB_RUNNING, memory_order_relaxed);
}

static void stop (Pool *p, Job *j) {
  if (j->prev != NULL) j->prev->next = j->next;
  else p->running = j->next;
  if (j->next != NULL) j->next->prev = j->prev;
  p->busy--;
  j->onthread = 0;
}


/* mutex held: the cancel of 'j' (see job_cancel) */
static int cancel (Pool *p, Job *j) {
  int s = atomic_load_explicit(&j->status, memory_order_relaxed);
  if (isfinal(s) || j->epoch != epoch) return 0;
  atomic_store(&j->cancel, 1);
  if (s == JOB_QUEUED) {	/* it never starts */
    unlink_queued(p, j);
    buffer_free(&j->in);
    message_putplain(&j->out, "cancelled", ISOLATE_CANCELLED);
    publish(p, j, JOB_CANCELLED);
    job_unref(p, j);		/* the queue's reference */
  }
  else {
    /* a job that its thread runs while this one waits for it is this
       one's child: its cancel comes first, where the signal looks */
    if (j->inner != NULL) cancel(p, j->inner);
    if (j->onthread && cancel_signal != 0)
      pthread_kill(j->thread, cancel_signal);	/* it sees the flag then */
    pthread_cond_broadcast(&j->mailed);	/* an emit that waits for room */
  }
  return 1;
}


int job_cancel (Pool *p, Job *j) {
  int asked;
  pthread_mutex_lock(&p->mu);
  asked = cancel(p, j);
  pthread_mutex_unlock(&p->mu);
  return asked;
}


/*
** {------------------------------------------------------
** Messages
** -------------------------------------------------------
*/

/*
** A job's messages queue up to the mailbox's limit while somebody may
** receive them (a spawned task's handle: job_new), and the emitter
** waits for room past it, unless somebody waits for the job's end
** instead (a caller in pool_wait, an end set): that caller reads them
** after the end, if ever, and the job must get there.  Nobody listening,
** they are dropped.
*/
void job_unlisten (Pool *p, Job *j) {
  pthread_mutex_lock(&p->mu);
  j->listened = 0;
  mailbox_free(&j->mail);	/* nobody will receive or poll: the bell goes */
  atomic_store_explicit(&j->nmail, 0, memory_order_relaxed);
  if (j->epoch == epoch) pthread_cond_broadcast(&j->mailed);	/* see lose() */
  pthread_mutex_unlock(&p->mu);
}


int job_pollfd (Pool *p, Job *j) {
  int fd;
  finished(p, j);
  pthread_mutex_lock(&p->mu);
  fd = mailbox_fd(&j->mail);
  pthread_mutex_unlock(&p->mu);
  return fd;
}


/*
** An emitter that found the mailbox full waits until it is half empty,
** not for one message to go: so the two threads do not wake each other
** for every message.
*/
static int must_wait (Job *j) {
  return j->listened && j->waiters == 0 && !atomic_load(&j->cancel) &&
         j->epoch == epoch &&	/* (a child forked in the isolate: nobody reads) */
         (j->emitwaits ? !mailbox_half(&j->mail) : mailbox_full(&j->mail));
}


int job_emit (Pool *p, Job *j, Buffer *msg) {
  int r = 1;
  pthread_mutex_lock(&p->mu);
  while (must_wait(j) && !p->closing) {	/* (close waits for the ends) */
    struct timespec deadline;
    j->emitwaits = 1;
    deadline_in(&deadline, ISOLATE_WAIT_MS);
    pthread_cond_timedwait(&j->mailed, &p->mu, &deadline);
  }
  j->emitwaits = 0;
  if (atomic_load(&j->cancel)) r = -1;
  else if (!j->listened || j->epoch != epoch) r = 0;
  else if (!mailbox_put(&j->mail, msg)) r = -2;
  else {
    atomic_store_explicit(&j->nmail, j->mail.n, memory_order_relaxed);
    if (j->epoch == epoch) pthread_cond_broadcast(&j->mailed);
  }
  pthread_mutex_unlock(&p->mu);
  buffer_free(msg);		/* (left empty when it was put) */
  return r;
}


/* has 'j' a message, or has it ended? (for a receiver that spins) */
static int has_mail (Job *j) {
  return atomic_load_explicit(&j->nmail, memory_order_relaxed) > 0 || job_ended(j);
}


/* mutex held: the oldest message of 'j', for the caller to free, or NULL */
static Mail *take_mail (Job *j) {
  Mail *mail = mailbox_take(&j->mail);
  if (mail != NULL) {
    atomic_store_explicit(&j->nmail, j->mail.n, memory_order_relaxed);
    if (j->emitwaits && mailbox_half(&j->mail) && j->epoch == epoch)
      pthread_cond_broadcast(&j->mailed);	/* room for an emit */
  }
  return mail;
}


int job_receive (Pool *p, Job *j, Mail **mail, long ms) {
  int r, spun = 0;
  struct timespec deadline;
  finished(p, j);
  if (ms > 0) deadline_in(&deadline, ms);
  pthread_mutex_lock(&p->mu);
  for (;;) {
    if ((*mail = take_mail(j)) != NULL) {
      r = 1;
      break;
    }
    if (job_ended(j)) {
      r = 0;
      break;
    }
    if (ms > 0 && !spun && p->busy < ncpus) {
      spun = 1;
      pthread_mutex_unlock(&p->mu);
      spin(j, has_mail);
      pthread_mutex_lock(&p->mu);
      continue;
    }
    if (ms <= 0 ||
        pthread_cond_timedwait(&j->mailed, &p->mu, &deadline) == ETIMEDOUT) {
      r = (*mail = take_mail(j)) != NULL ? 1 : job_ended(j) ? 0 : -1;
      break;
    }
  }
  pthread_mutex_unlock(&p->mu);
  return r;
}


void job_awaited (Pool *p, Job *j, int delta) {
  pthread_mutex_lock(&p->mu);
  j->waiters += delta;
  if (delta > 0 && j->waiters == delta && mailbox_full(&j->mail) && j->epoch == epoch)
    pthread_cond_broadcast(&j->mailed);	/* an emit waits no more */
  pthread_mutex_unlock(&p->mu);
}


size_t job_pending (Pool *p, Job *j) {
  size_t n;
  pthread_mutex_lock(&p->mu);
  n = j->mail.n;
  pthread_mutex_unlock(&p->mu);
  return n;
}


void job_take_mail (Pool *p, Job *j, Mailbox *dst) {
  pthread_mutex_lock(&p->mu);
  mailbox_move(dst, &j->mail);
  pthread_mutex_unlock(&p->mu);
}

/* }------------------------------------------------------ */


/* mutex held: inits under way stop (their states will run no job) */
static void stopinits (Pool *p) {
  int i;
  if (atomic_exchange(&p->stopinit, 1)) return;
  for (i = 0; i <= p->size && p->workers != NULL; i++)
    if (p->workers[i] != NULL && cancel_signal != 0)
      pthread_kill(p->workers[i]->thread, cancel_signal);
}


void pool_cancelall (Pool *p) {
  Job *j;
  pthread_mutex_lock(&p->mu);
  while (p->head != NULL) cancel(p, p->head);
  for (j = p->running; j != NULL; j = j->next) cancel(p, j);
  stopinits(p);
  pthread_mutex_unlock(&p->mu);
}

/* }====================================================== */


/*
** {======================================================
** Threads
** =======================================================
*/

/*
** The lowest address of the calling thread's stack, where the system
** tells it (glibc's and musl's pthread_getattr_np; macOS gives the top and
** the size); NULL: unknown.
*/
static const char *stack_low (void) {
#if defined(__linux__)
  pthread_attr_t attr;
  void *addr = NULL;
  size_t size = 0;
  if (pthread_getattr_np(pthread_self(), &attr) == 0) {
    pthread_attr_getstack(&attr, &addr, &size);
    pthread_attr_destroy(&attr);
  }
  return (const char *)addr;
#elif defined(__APPLE__)
  pthread_t t = pthread_self();
  return (const char *)pthread_get_stackaddr_np(t) - pthread_get_stacksize_np(t);
#else
  return NULL;
#endif
}


/*
** Threads' names, where the system has them (the kernel keeps 15 bytes of
** one).  macOS names only the calling thread: there, a thread that another
** starts has none.
*/
static void name_thread (pthread_t t, const char *name) {
#if defined(__linux__)
  pthread_setname_np(t, name);
#else
  (void)t; (void)name;
#endif
}

static void name_self (const char *name) {
#if defined(__linux__)
  pthread_setname_np(pthread_self(), name);
#elif defined(__APPLE__)
  pthread_setname_np(name);
#else
  (void)name;
#endif
}


/* bytes of C stack left below the caller's frame */
static size_t stack_left (Worker *w) {
  const char *here = (const char *)__builtin_frame_address(0);
  if (w->stacklow == NULL || here < w->stacklow) return (size_t)-1;
  return (size_t)(here - w->stacklow);
}


/*
** A detached thread with an explicit stack size and the asynchronous
** signals blocked.  Faults (SIGSEGV and the like) stay open: they belong
** to the thread that causes them.
*/
static int detached (void *(*fn) (void *), void *arg, pthread_t *t) {
  pthread_attr_t attr;
  sigset_t all, old;
  int err;
  pthread_attr_init(&attr);
  pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
  pthread_attr_setstacksize(&attr, ISOLATE_STACK_SIZE);
  sigfillset(&all);
  sigdelset(&all, SIGSEGV);
  sigdelset(&all, SIGBUS);
  sigdelset(&all, SIGFPE);
  sigdelset(&all, SIGILL);
  sigdelset(&all, SIGTRAP);
  sigdelset(&all, SIGSYS);
  pthread_sigmask(SIG_BLOCK, &all, &old);
  err = pthread_create(t, &attr, fn, arg);
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  pthread_attr_destroy(&attr);
  return err == 0;
}


/* a thread of the pool (number 'n', or -1: a lent one); it holds a reference */
static int start_thread (Pool *p, void *(*fn) (void *), void *arg, int n) {
  pthread_t t;
  int ok;
  pthread_mutex_lock(&p->mu);
  p->threads++;
  p->refs += (p->refs > 0);
  pthread_mutex_unlock(&p->mu);
  if (!(ok = detached(fn, arg, &t))) {
    pthread_mutex_lock(&p->mu);
    p->threads--;
    p->refs -= (p->refs > 1);
    pthread_mutex_unlock(&p->mu);
  }
  else if (n >= 0) {
    char name[64];
    snprintf(name, sizeof(name), "%s/%d", p->name ? p->name : "isolate", n);
    name[15] = '\0';		/* the kernel keeps 15 bytes of a thread's name */
    name_thread(t, name);
  }
  return ok;
}


/* a thread of 'p' begins: who it is, and the cancel signal open */
static void begin (Worker *w, Pool *p) {
  int i;
  w->pool = p;
  w->thread = pthread_self();
  w->slot = -1;
  pthread_mutex_lock(&p->mu);
  for (i = 0; i <= p->size && p->workers != NULL; i++)
    if (p->workers[i] == NULL) {
      p->workers[i] = w;
      w->slot = i;
      break;
    }
  pthread_mutex_unlock(&p->mu);
  w->stacklow = stack_low();
#if !defined(__linux__) && !defined(__APPLE__)
  if (w->stacklow == NULL)	/* unknown: its size (detached) below here, less a margin */
    w->stacklow = (const char *)__builtin_frame_address(0) - ISOLATE_STACK_SIZE + (64u << 10);
#endif
  atomic_init(&w->shown, NULL);
  w->job = NULL;
  pthread_setspecific(worker_key, w);
  if (cancel_signal != 0) {
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, cancel_signal);
    pthread_sigmask(SIG_UNBLOCK, &set, NULL);
  }
}


/* a thread of 'p' ends */
static void end (Pool *p, Worker *w) {
  pthread_setspecific(worker_key, NULL);
  pthread_mutex_lock(&p->mu);
  if (w->slot >= 0) p->workers[w->slot] = NULL;
  p->threads--;
  pthread_cond_broadcast(&p->gone);
  pthread_mutex_unlock(&p->mu);
  pool_release(p);
}


/*
** Run a job taken from the queue in the fresh state 'L', publish its end,
** then close the state (or, with 'handoff', leave it to a worker).
** A job whose cancel was asked for before it ended ends cancelled, even
** if its code had finished.  A thread that a fork left in the child (it
** forked from inside an isolate) finishes its job there, for nobody: then
** it ends the child process, which no thread of the pool would ever end
** otherwise.
*/
static void execute (Pool *p, Job *j, lua_State *L, Worker *w, int handoff) {
  lua_State *outer = atomic_load_explicit(&w->shown, memory_order_relaxed);
  StateRun run;
  int ok, forked;
  run.name = p->name;
  run.depth = j->depth;
  run.cancel = &j->cancel;
  Job *waiting = w->job;
  run.shown = &w->shown;
  run.pool = p;
  run.job = j;
  w->job = j;
  ok = state_run(L, &j->in, &j->out, &run);
  w->job = waiting;
  atomic_store_explicit(&w->shown, outer, memory_order_relaxed);
  pthread_mutex_lock(&p->mu);
  forked = (j->epoch != epoch);
  if (!forked) stop(p, j);	/* the child's lists know nothing of it */
  if (forked)
    atomic_store_explicit(&j->status, ok ? JOB_DONE : JOB_FAILED, memory_order_release);
  else if (atomic_load(&j->cancel)) {
    buffer_free(&j->out);
    message_putplain(&j->out, "cancelled", ISOLATE_CANCELLED);
    publish(p, j, JOB_CANCELLED);
  }
  else {
    if (j->out.borrowed > 0 && !j->orphaned) {	/* it borrows from L: L stays */
      j->out.owner = L;
      L = NULL;
    }
    publish(p, j, ok ? JOB_DONE : JOB_FAILED);
  }
  job_unref(p, j);
  if (handoff && L != NULL && p->ntoclose < ISOLATE_STASH) {
    closelater(p, L);		/* the preparer closes it */
    L = NULL;
  }
  pthread_mutex_unlock(&p->mu);
  if (forked) _exit(ok ? 0 : 1);
  {
    unsigned long e = epoch;
    state_close(L);		/* its results are out: finalizers run now */
    if (epoch != e) _exit(0);	/* one of them forked: as above */
  }
}


/* a fresh state for the next job of 'p', its init done (on the thread of 'w') */
static lua_State *prepare (Pool *p, Worker *w) {
  lua_State *L = state_new(p->limit);
  if (p->init.total > 0) {
    StateRun run;
    run.name = p->name;
    run.depth = 1;
    run.cancel = &p->stopinit;
    run.shown = &w->shown;
    run.pool = run.job = NULL;
    state_init(L, &p->init, &run);
  }
  return L;
}


/*
** A fresh state of the stash for a job (its preparer makes another), or
** NULL when it is empty: the job's thread prepares one itself then.
** Mutex held.
*/
static lua_State *take_fresh (Pool *p) {
  if (p->nstash == 0) return NULL;
  pthread_cond_signal(&p->prep);
  return p->stash[--p->nstash];
}


/*
** A worker runs jobs; one that closes runs what is queued, then ends.
** A worker that finds no job makes the stash's next state itself, when
** it wants one and the pool has no init (a state then costs some 15 us),
** and looks at the queue again before it sleeps: a caller that waits for
** one job at a time (an event loop) finds it awake, not asleep on a
** condition variable, which on some machines takes longer to wake than
** the job takes to run.  (The preparer makes the rest, and those with
** an init, which may take milliseconds: no job waits for one.)
*/
static void *worker (void *arg) {
  Worker w;
  Pool *p = (Pool *)arg;
  begin(&w, p);
  for (;;) {
    Job *j;
    lua_State *L;
    int nomem = 0;
    pthread_mutex_lock(&p->mu);
    while (p->head == NULL && !p->closing) {
      if ((L = toclose(p)) != NULL) {	/* one the preparer has not taken */
        unsigned long e = epoch;	/* (closed as execute() closes its own) */
        p->closers++;
        pthread_mutex_unlock(&p->mu);
        state_close(L);
        if (epoch != e) _exit(0);	/* a finalizer forked: see execute() */
        pthread_mutex_lock(&p->mu);
        if (--p->closers == 0) pthread_cond_broadcast(&p->prepared);
        continue;
      }
      if (!nomem && p->init.total == 0 && p->nstash + p->making < p->stashcap) {
        p->making++;
        pthread_mutex_unlock(&p->mu);
        L = state_new(p->limit);
        pthread_mutex_lock(&p->mu);
        if (--p->making == 0) pthread_cond_broadcast(&p->prepared);	/* (fork) */
        if (L != NULL && p->nstash < p->stashcap && !p->closing) {
          p->stash[p->nstash++] = L;
          continue;
        }
        pthread_mutex_unlock(&p->mu);
        state_close(L);
        pthread_mutex_lock(&p->mu);
        nomem = (L == NULL);	/* then not again before a job */
        continue;
      }
      p->sleeping++;
      pthread_cond_wait(&p->work, &p->mu);
      p->sleeping--;
    }
    if ((j = p->head) == NULL) {
      pthread_mutex_unlock(&p->mu);
      break;
    }
    start(p, j);
    L = take_fresh(p);
    pthread_mutex_unlock(&p->mu);
    execute(p, j, L != NULL ? L : prepare(p, &w), &w, 0);
  }
  end(p, &w);
  return NULL;
}


/*
** The preparer keeps the stash full: one fresh state for each worker and
** ISOLATE_STASH more for callers that run their own jobs (runhere), so
** that making a state (init included) is not part of a round trip.  It
** also closes what callers leave (toclose).  It runs as a batch thread
** (SCHED_BATCH on Linux): waking it does not preempt the caller or the
** job that woke it, yet it has a fair share of the CPUs, so it never holds
** the pool's mutex for long while the threads that need it wait (as a
** thread of idle priority would, preempted there).
*/
static void batch_thread (void) {
#if defined(SCHED_BATCH)
  struct sched_param sp;
  memset(&sp, 0, sizeof(sp));
  pthread_setschedparam(pthread_self(), SCHED_BATCH, &sp);
#endif
}

static void *preparer (void *arg) {
  Worker w;
  Pool *p = (Pool *)arg;
  lua_State *L;
  char name[64];
  snprintf(name, sizeof(name), "%s/prep", p->name ? p->name : "isolate");
  name[15] = '\0';
  name_self(name);
  begin(&w, p);
  batch_thread();
  pthread_mutex_lock(&p->mu);
  for (;;) {
    while (!p->closing && p->ntoclose == 0 && p->nstash + p->making >= p->stashcap)
      pthread_cond_wait(&p->prep, &p->mu);
    if (p->ntoclose > 0) {	/* a caller's state, after its job */
      unsigned long e = epoch;
      L = toclose(p);
      p->closers++;		/* (a fork does not wait for its finalizers, as it
				   does not for a worker's: see quiesce) */
      pthread_mutex_unlock(&p->mu);
      state_close(L);
      if (epoch != e) _exit(0);	/* a finalizer forked: see execute() */
      pthread_mutex_lock(&p->mu);
      if (--p->closers == 0) pthread_cond_broadcast(&p->prepared);
    }
    else if (p->closing) break;
    else {
      p->preparing = 1;
      pthread_mutex_unlock(&p->mu);
      L = prepare(p, &w);
      pthread_mutex_lock(&p->mu);
      p->preparing = 0;
      pthread_cond_broadcast(&p->prepared);
      if (L != NULL && p->nstash < p->stashcap && !p->closing) {
        p->stash[p->nstash++] = L;
        L = NULL;
      }
      else if (L == NULL && !p->closing)	/* no memory: not again before */
        pthread_cond_wait(&p->prep, &p->mu);	/* a state is taken */
      if (L != NULL) {
        pthread_mutex_unlock(&p->mu);
        state_close(L);
        pthread_mutex_lock(&p->mu);
      }
    }
  }
  pthread_mutex_unlock(&p->mu);
  end(p, &w);
  return NULL;
}


/* a job lent to a thread of its own (the waiting worker's stack is low) */
typedef struct Lent {
  Pool *pool;
  Job *job;
} Lent;

static void *lent_thread (void *arg) {
  Lent lent = *(Lent *)arg;
  Worker w;
  lua_State *L;
  free(arg);
  begin(&w, lent.pool);
  pthread_mutex_lock(&lent.pool->mu);
  lent.job->thread = pthread_self();
  lent.job->onthread = 1;
  L = take_fresh(lent.pool);
  pthread_mutex_unlock(&lent.pool->mu);
  execute(lent.pool, lent.job, L != NULL ? L : prepare(lent.pool, &w), &w, 0);
  end(lent.pool, &w);
  return NULL;
}

/* 'j' was started (it is running) by a thread that cannot run it */
static void lend (Pool *p, Job *j) {
  Lent *lent = (Lent *)malloc(sizeof(Lent));
  if (lent != NULL) {
    lent->pool = p;
    lent->job = j;
    if (start_thread(p, lent_thread, lent, -1)) return;
    free(lent);
  }
  buffer_free(&j->in);
  message_putplain(&j->out, "error",
                   "isolate: cannot start a thread for a nested isolate");
  pthread_mutex_lock(&p->mu);
  stop(p, j);
  publish(p, j, JOB_FAILED);
  job_unref(p, j);		/* the queue's reference */
  pthread_mutex_unlock(&p->mu);
}

/* }====================================================== */


/*
** {======================================================
** Starting, closing, forking
** =======================================================
*/

/*
** A fork waits until no preparer (nor idle worker) is making a state, so
** that none is inside the allocator then: an allocator that does not lock
** itself around fork (ASan's, in clang 14) would be left locked in the
** child.  (An idle worker makes states only until the stash is full.)
*/
static void quiesce (Pool *p) {
  pthread_mutex_lock(&p->mu);
  while (p->preparing || p->making > 0) pthread_cond_wait(&p->prepared, &p->mu);
}

static void fork_prepare (void) {
  Pool *p;
  pthread_mutex_lock(&start_mu);
  quiesce(&default_pool);
  pthread_mutex_lock(&pools_mu);
  for (p = pools; p != NULL; p = p->nextpool) quiesce(p);
}

static void fork_parent (void) {
  Pool *p;
  for (p = pools; p != NULL; p = p->nextpool) pthread_mutex_unlock(&p->mu);
  pthread_mutex_unlock(&pools_mu);
  pthread_mutex_unlock(&default_pool.mu);
  pthread_mutex_unlock(&start_mu);
}

/*
** A pool in the child: none of its threads are there.  Its queued jobs
** are lost (their tasks fail), and so are its running ones, when their
** tasks look (finished).  Its prepared states are copies of the parent's,
** left alone.
*/
static void orphan_pool (Pool *p) {
  Job *j = p->head;
  while (j != NULL) {
    Job *next = j->next;
    lose(j);
    job_unref(p, j);		/* the queue's reference */
    j = next;
  }
  p->head = p->tail = p->running = NULL;
  p->queued = p->busy = 0;
  p->nstash = p->ntoclose = p->closers = 0;
  p->toclose = NULL;
  p->making = 0;
  p->sleeping = 0;
  p->threads = 0;
  pthread_cond_init(&p->work, NULL);	/* its waiters were the parent's */
  {
    pthread_condattr_t ca;	/* on WAIT_CLOCK, as pool_new makes it */
    cond_clock(&ca);
    pthread_cond_init(&p->gone, &ca);
    pthread_condattr_destroy(&ca);
  }
  pthread_cond_init(&p->prep, NULL);
  pthread_cond_init(&p->prepared, NULL);
  p->preparing = 0;
  pthread_mutex_init(&p->mu, NULL);
}

/* the default pool starts again on first use; pools of one's own do not */
static void fork_child (void) {
  Pool *p;
  epoch++;
  orphan_pool(&default_pool);
  default_pool.size = 0;
  atomic_store(&started, 0);
  for (p = pools; p != NULL; p = p->nextpool) {
    orphan_pool(p);
    p->closing = 1;		/* pool_unusable tells why */
  }
  pthread_mutex_init(&pools_mu, NULL);
  pthread_mutex_init(&start_mu, NULL);
  pthread_mutex_init(&ends_mu, NULL);
  {
    pthread_condattr_t ca;	/* its waiters were the parent's */
    cond_clock(&ca);
    pthread_cond_init(&ends_cv, &ca);
    pthread_condattr_destroy(&ca);
  }
  atomic_store(&ends_waiters, 0);
  pthread_mutex_init(&watch_mu, NULL);	/* the watchdog was the parent's */
  pthread_cond_init(&watch_cv, NULL);
  watched = NULL;
  watchdog = 0;
  watch_asleep = 0;
}


#if defined(ISOLATE_CANCEL_SIGNAL) || defined(SIGRTMIN)

/* on a thread of a pool: the job that runs there was maybe cancelled */
static void on_cancel_signal (int sig) {
  int saved = errno;
  Worker *w = (Worker *)pthread_getspecific(worker_key);
  lua_State *L;
  (void)sig;
  if (w != NULL && (L = atomic_load_explicit(&w->shown, memory_order_relaxed)) != NULL)
    state_interrupt(L);
  errno = saved;
}


/*
** The cancel signal: the highest real-time signal that nobody handles
** (ISOLATE_CANCEL_SIGNAL, if defined, is the one to take).  Without one
** (a system without real-time signals, as macOS), a cancel is seen at the
** isolate's next check (state.c) only.
*/
static int take (int sig, const struct sigaction *sa) {
  struct sigaction old;
  if (sigaction(sig, NULL, &old) == 0 && !(old.sa_flags & SA_SIGINFO) &&
      old.sa_handler == SIG_DFL && sigaction(sig, sa, NULL) == 0) {
    cancel_signal = sig;
    return 1;
  }
  return 0;
}

static void take_signal (void) {
  struct sigaction sa;
  memset(&sa, 0, sizeof(sa));
  sa.sa_handler = on_cancel_signal;
  sigfillset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;
#if defined(ISOLATE_CANCEL_SIGNAL)
  take(ISOLATE_CANCEL_SIGNAL, &sa);
#else
  {
    int sig;
    for (sig = SIGRTMAX - 1; sig > SIGRTMIN + 2; sig--)
      if (take(sig, &sa)) return;
  }
#endif
}
#else
static void take_signal (void) {	/* (none) */
}
#endif


int pool_cansignal (void) {
  return cancel_signal != 0;
}


static void init_once (void) {
  pthread_condattr_t ca;
  ncpus = pool_cpus();
  cond_clock(&ca);
  pthread_cond_init(&ends_cv, &ca);
  pthread_condattr_destroy(&ca);
  pthread_key_create(&worker_key, NULL);
  pthread_atfork(fork_prepare, fork_parent, fork_child);
  take_signal();
}


static const char *caller_stacklow (void);

size_t pool_stackleft (void) {
  Worker *w, other;
  if (pthread_once(&key_once, init_once) != 0) return (size_t)-1;
  if ((w = (Worker *)pthread_getspecific(worker_key)) == NULL) {
    w = &other;			/* a caller's thread */
    other.stacklow = caller_stacklow();
  }
  return stack_left(w);
}


Pool *pool_default (void) {
  Pool *p = &default_pool;
  if (!atomic_load_explicit(&started, memory_order_acquire)) {
    pthread_once(&key_once, init_once);
    pthread_mutex_lock(&start_mu);
    if (!atomic_load_explicit(&started, memory_order_relaxed)) {
      int i, n = pool_cpus();
      pthread_mutex_lock(&p->mu);
      free(p->workers);		/* a forked child's copy of the parent's */
      free(p->stash);
      p->workers = (Worker **)calloc((size_t)n + 1, sizeof(Worker *));
      p->stash = (lua_State **)calloc((size_t)n + ISOLATE_STASH, sizeof(lua_State *));
      p->stashcap = p->stash != NULL ? n + ISOLATE_STASH : 0;
      p->size = n;
      pthread_mutex_unlock(&p->mu);
      for (i = 0; i < n && start_thread(p, worker, p, i); i++) ;
      if (i > 0) start_thread(p, preparer, p, -1);	/* without it, no stash */
      pthread_mutex_lock(&p->mu);
      p->size = i;
      pthread_mutex_unlock(&p->mu);
      atomic_store_explicit(&started, 1, memory_order_release);
    }
    pthread_mutex_unlock(&start_mu);
  }
  return p->size > 0 ? p : NULL;
}


/* free a pool of one's own that no list, thread or task knows any more */
static void destroy (Pool *p) {
  while (p->nstash > 0) state_close(p->stash[--p->nstash]);
  while (p->toclose != NULL) {
    lua_State *L = p->toclose;
    p->toclose = state_next(L);
    state_close(L);
  }
  free(p->workers);
  free(p->stash);
  pthread_cond_destroy(&p->work);
  pthread_cond_destroy(&p->gone);
  pthread_cond_destroy(&p->prep);
  pthread_cond_destroy(&p->prepared);
  pthread_mutex_destroy(&p->mu);
  buffer_free(&p->init);
  free(p->name);
  free(p);
}


Pool *pool_new (int size, const char *name, size_t limit, Buffer *init) {
  Pool *p = (Pool *)calloc(1, sizeof(Pool));
  pthread_condattr_t ca;
  int i;
  pthread_once(&key_once, init_once);
  if (p == NULL) return NULL;
  if (name != NULL && (p->name = strdup(name)) == NULL) {
    free(p);
    return NULL;
  }
  cond_clock(&ca);		/* for pool_close */
  pthread_mutex_init(&p->mu, NULL);
  pthread_cond_init(&p->work, NULL);
  pthread_cond_init(&p->gone, &ca);
  pthread_condattr_destroy(&ca);
  pthread_cond_init(&p->prep, NULL);
  pthread_cond_init(&p->prepared, NULL);
  p->refs = 1;
  p->pid = getpid();
  p->limit = limit;
  p->size = size;
  p->stashcap = size + ISOLATE_STASH;
  p->stash = (lua_State **)calloc((size_t)p->stashcap, sizeof(lua_State *));
  if ((p->workers = (Worker **)calloc((size_t)size + 1, sizeof(Worker *))) == NULL ||
      p->stash == NULL) {
    destroy(p);
    return NULL;
  }
  if (init != NULL) buffer_move(&p->init, init);
  pthread_mutex_lock(&pools_mu);
  p->nextpool = pools;
  if (pools != NULL) pools->prevpool = p;
  pools = p;
  pthread_mutex_unlock(&pools_mu);
  for (i = 0; i < size && start_thread(p, worker, p, i); i++) ;
  if (i < size || !start_thread(p, preparer, p, -1)) {	/* all or nothing */
    pool_close(p, -1);
    pool_release(p);
    return NULL;
  }
  return p;
}


void pool_retain (Pool *p) {
  pthread_mutex_lock(&p->mu);
  p->refs += (p->refs > 0);
  pthread_mutex_unlock(&p->mu);
}


void pool_release (Pool *p) {
  int left;
  pthread_mutex_lock(&p->mu);
  left = p->refs > 0 ? --p->refs : 1;
  pthread_mutex_unlock(&p->mu);
  if (left == 0) {
    pthread_mutex_lock(&pools_mu);
    if (p->prevpool != NULL) p->prevpool->nextpool = p->nextpool;
    else pools = p->nextpool;
    if (p->nextpool != NULL) p->nextpool->prevpool = p->prevpool;
    pthread_mutex_unlock(&pools_mu);
    destroy(p);
  }
}


int pool_close (Pool *p, long ms) {
  struct timespec deadline;
  Job *j;
  int gone;
  if (p == &default_pool) return 0;
  deadline_in(&deadline, ms > 0 ? ms : 0);
  pthread_mutex_lock(&p->mu);
  p->closing = 1;
  pthread_cond_broadcast(&p->work);
  pthread_cond_signal(&p->prep);
  if (p->head == NULL) stopinits(p);	/* they prepare states for nothing */
  for (j = p->running; j != NULL; j = j->next)	/* it waits for their ends: */
    pthread_cond_broadcast(&j->mailed);	/* an emit waits for room no more */
  while (p->threads > 0 && ms != 0) {
    if (ms < 0) pthread_cond_wait(&p->gone, &p->mu);
    else if (pthread_cond_timedwait(&p->gone, &p->mu, &deadline) == ETIMEDOUT) break;
  }
  gone = (p->threads == 0);
  pthread_mutex_unlock(&p->mu);
  return gone;
}


const char *pool_name (Pool *p) {
  return p->name;
}


unsigned long pool_epoch (void) {
  return epoch;
}


const char *pool_unusable (Pool *p) {
  if (p != &default_pool && p->pid != getpid())
    return "isolate: this pool was made before the process forked; "
           "it works in the parent process only";
  if (p->closing) return "isolate: the pool is closed";
  return NULL;
}


void pool_stats (Pool *p, PoolStats *s) {
  pthread_mutex_lock(&p->mu);
  s->workers = p->size;
  s->busy = p->busy;
  s->queued = p->queued;
  s->done = p->done;
  s->failed = p->failed;
  s->cancelled = p->cancelled;
  pthread_mutex_unlock(&p->mu);
}

/* }====================================================== */


int pool_submit (Pool *p, Job *j) {
  pthread_mutex_lock(&p->mu);
  if (p->closing) {
    pthread_mutex_unlock(&p->mu);
    return 0;
  }
  j->refs++;
  j->id = ++p->nextid;
  j->epoch = epoch;
  atomic_store_explicit(&j->status, JOB_QUEUED, memory_order_relaxed);
  enqueue(p, j);
  if (p->sleeping > 0)
    pthread_cond_signal(&p->work);
  pthread_mutex_unlock(&p->mu);
  return 1;
}


static void job_unwait (Pool *p, Job *j) {
  pthread_mutex_lock(&p->mu);
  j->waiters--;
  pthread_mutex_unlock(&p->mu);
}


int pool_wait (Pool *p, Job *j, long ms, int runs) {
  lua_State *L = NULL;
  Worker *w;
  struct timespec deadline;
  int ended, spins;
  if (finished(p, j)) return 1;
  w = (Worker *)pthread_getspecific(worker_key);
  if (runs && w != NULL && w->pool == p) {
    int mine = 0;
    pthread_mutex_lock(&p->mu);
    if (atomic_load_explicit(&j->status, memory_order_relaxed) == JOB_QUEUED) {
      start(p, j);
      mine = 1;
      L = take_fresh(p);
      if (w->job != NULL && !isfinal(atomic_load(&w->job->status))) {
        w->job->inner = j;	/* so that cancelling the waiting job reaches it */
        j->outer = w->job;
        if (atomic_load(&w->job->cancel)) cancel(p, j);
      }
    }
    j->waiters += mine;		/* it cannot read the job's messages meanwhile */
    pthread_mutex_unlock(&p->mu);
    if (mine) {		/* drops the queue's reference; the caller's remains */
      if (stack_left(w) >= ISOLATE_INLINE_STACK) {
        execute(p, j, L != NULL ? L : prepare(p, w), w, 0);
        job_unwait(p, j);
        return 1;
      }
      state_close(L);		/* (the lent thread makes its own) */
      lend(p, j);
      job_unwait(p, j);
    }
  }
  pthread_mutex_lock(&p->mu);
  spins = ms > 0 && p->queued == 0 && p->busy < ncpus;
  pthread_mutex_unlock(&p->mu);
  if (spins && spin(j, job_ended)) return 1;	/* a poll only looks */
  deadline_in(&deadline, ms);
  pthread_mutex_lock(&p->mu);
  if (!job_ended(j)) {
    if (j->waiters++ == 0 && mailbox_full(&j->mail))
      pthread_cond_broadcast(&j->mailed);	/* an emit waits no more */
    while (!(ended = job_ended(j)) &&
           pthread_cond_timedwait(&j->ended, &p->mu, &deadline) != ETIMEDOUT) ;
    j->waiters--;
  }
  else ended = 1;
  pthread_mutex_unlock(&p->mu);
  return ended;
}


/*
** {======================================================
** A caller runs its own isolate
** =======================================================
*/

/*
** A caller that would only wait for its job (run) may run it itself, in
** a fresh state of the pool's stash: waking an idle worker costs more
** than a small isolate's whole run on some machines (100-200 us here).
** The job is as any other (a fresh state, values copied, counted in the
** pool's stats, cancelled by the cancel signal sent to the caller's
** thread).  What the caller's thread would have noticed while it waited
** is watched by the watchdog thread instead: a hook set on the caller's
** state (the standalone interpreter's Ctrl-C) cancels the job, and the
** caller's wait then raises the hook's error as before.  The watchdog
** looks every ISOLATE_WATCH_MS while callers run jobs, and for a second
** after the last, then sleeps until the next: a caller that runs a job
** now and then does not pay for waking it each time.
*/
struct Inline {
  struct Inline *next;
  lua_State *caller[2];		/* the caller's thread and main thread: */
  lua_Hook hook[2];		/* the watchdog reads their hooks only */
  int mask[2];
  Pool *pool;
  Job *job;
};

static pthread_key_t caller_key;	/* a caller thread's lowest stack address */


static void *watch_thread (void *arg) {
  unsigned long runs = 0;
  int idle = 0;			/* looks without a caller's run since the last */
  (void)arg;
  pthread_mutex_lock(&watch_mu);
  for (;;) {
    struct timespec t;
    Inline *in;
    if (watched == NULL && idle >= 1000 / ISOLATE_WATCH_MS) {	/* a second */
      watch_asleep = 1;
      while (watched == NULL) pthread_cond_wait(&watch_cv, &watch_mu);
      watch_asleep = 0;
    }
    clock_gettime(CLOCK_REALTIME, &t);
    t.tv_nsec += ISOLATE_WATCH_MS * 1000000L;
    if (t.tv_nsec >= 1000000000L) {
      t.tv_sec++;
      t.tv_nsec -= 1000000000L;
    }
    pthread_cond_timedwait(&watch_cv, &watch_mu, &t);
    idle = (watch_runs == runs && watched == NULL) ? idle + 1 : 0;
    runs = watch_runs;
    for (in = watched; in != NULL; in = in->next) {
      int i;			/* words that a signal handler of the caller may write */
      for (i = 0; i < 2; i++)
        if (lua_gethook(in->caller[i]) != in->hook[i] ||
            lua_gethookmask(in->caller[i]) != in->mask[i])
          job_cancel(in->pool, in->job);
    }
  }
  return NULL;
}


static void caller_once (void) {
  pthread_key_create(&caller_key, free);
}


/* the lowest address of the calling thread's stack, found once per thread */
static const char *caller_stacklow (void) {
  static pthread_once_t once = PTHREAD_ONCE_INIT;
  const char **low;
  pthread_once(&once, caller_once);
  if ((low = (const char **)pthread_getspecific(caller_key)) == NULL) {
    if ((low = (const char **)malloc(sizeof(*low))) == NULL) return NULL;
    *low = stack_low();
    pthread_setspecific(caller_key, low);
  }
  return *low;
}


int pool_runhere (Pool *p, Job *j, lua_State *caller, lua_State *mainthread) {
  Worker w;
  Inline in;
  lua_State *L = NULL;
  int i;
#if defined(ISOLATE_CANCEL_POLL)
  return 0;			/* see state.c: no signals, so no watchdog */
#endif
  if (cancel_signal == 0 || pthread_getspecific(worker_key) != NULL)
    return 0;			/* a worker runs queued jobs itself anyway */
  if (lua_gethook(caller) != NULL || lua_gethook(mainthread) != NULL)
    return 0;			/* to be run before the wait (core.c's watch) */
  w.pool = p;
  w.stacklow = caller_stacklow();
  atomic_init(&w.shown, NULL);
  w.job = NULL;
  if (w.stacklow == NULL || stack_left(&w) < ISOLATE_INLINE_STACK) return 0;
  if (watchdog == 0) {
    pthread_mutex_lock(&watch_mu);
    if (watchdog == 0) {
      pthread_t t;
      watchdog = detached(watch_thread, NULL, &t) ? 1 : -1;
      if (watchdog > 0) name_thread(t, "isolate/watch");
    }
    pthread_mutex_unlock(&watch_mu);
  }
  if (watchdog < 0) return 0;
  pthread_mutex_lock(&p->mu);
  if (p->nstash > 0 && !p->closing) {
    L = p->stash[--p->nstash];
    j->refs++;			/* as the queue's, dropped by execute */
    j->id = ++p->nextid;
    j->epoch = epoch;
    atomic_store_explicit(&j->status, JOB_QUEUED, memory_order_relaxed);
    enqueue(p, j);
    start(p, j);		/* (the preparer is told after the job: execute) */
  }
  pthread_mutex_unlock(&p->mu);
  if (L == NULL) return 0;
  in.caller[0] = caller;
  in.caller[1] = mainthread;
  for (i = 0; i < 2; i++) {
    in.hook[i] = lua_gethook(in.caller[i]);
    in.mask[i] = lua_gethookmask(in.caller[i]);
  }
  in.pool = p;
  in.job = j;
  pthread_mutex_lock(&watch_mu);
  in.next = watched;
  watch_runs++;
  if (watch_asleep) pthread_cond_signal(&watch_cv);	/* (once a second at most) */
  watched = &in;
  pthread_mutex_unlock(&watch_mu);
  pthread_setspecific(worker_key, &w);
  execute(p, j, L, &w, 1);
  pthread_setspecific(worker_key, NULL);
  pthread_mutex_lock(&watch_mu);
  {
    Inline **link = &watched;
    while (*link != &in) link = &(*link)->next;
    *link = in.next;
  }
  pthread_mutex_unlock(&watch_mu);
  return 1;
}

/* }====================================================== */


unsigned long pool_ends (void) {
  return atomic_load(&ends);
}


void pool_waitends (unsigned long seen, long ms) {
  struct timespec deadline;
  pthread_once(&key_once, init_once);
  deadline_in(&deadline, ms);
  pthread_mutex_lock(&ends_mu);
  atomic_fetch_add(&ends_waiters, 1);
  while (atomic_load(&ends) == seen &&
         pthread_cond_timedwait(&ends_cv, &ends_mu, &deadline) != ETIMEDOUT) ;
  atomic_fetch_sub(&ends_waiters, 1);
  pthread_mutex_unlock(&ends_mu);
}
