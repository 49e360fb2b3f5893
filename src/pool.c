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
** are for the threads of the program, which can handle them in Lua.
*/
#define _GNU_SOURCE		/* pthread_setname_np, pthread_getattr_np */
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#include "isolate.h"
#include "message.h"
#include "pool.h"
#include "state.h"


struct Job {
  struct Job *next;		/* in the queue */
  int refs;
  _Atomic int status;		/* a JobStatus: written under the mutex */
  unsigned long id;
  unsigned long epoch;		/* the pool's epoch when it was submitted */
  int depth;			/* nesting of its isolate */
  pthread_cond_t ended;		/* broadcast when status becomes final */
  Buffer in;			/* package paths, then the function and arguments */
  Buffer out;			/* results, or the failure record */
};

struct Pool {
  pthread_mutex_t mu;
  pthread_cond_t work;		/* signalled when a job is queued */
  Job *head, *tail;		/* the queue, FIFO */
  int sleeping;			/* workers waiting on 'work' */
  int size;			/* worker threads */
  unsigned long nextid;
  unsigned long epoch;		/* one more in each forked child */
  const char *name;		/* NULL for the default pool */
};

static Pool default_pool = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER,
                            NULL, NULL, 0, 0, 0, 0, NULL};
static pthread_mutex_t start_mu = PTHREAD_MUTEX_INITIALIZER;
static atomic_int started;	/* the default pool's threads were started */

/*
** What a thread of a pool knows of itself, through a pthread key, not
** _Thread_local: the dynamic TLS of a dlopen'ed library is beyond what
** some tools walk (LeakSanitizer's tracer crashes on it).
*/
typedef struct Worker {
  Pool *pool;
  const char *stacklow;		/* lowest address of its stack (NULL: unknown) */
} Worker;

static pthread_key_t worker_key;
static pthread_once_t key_once = PTHREAD_ONCE_INIT;


/* the CPUs this process may run on (taskset, cgroup cpusets), or online */
int pool_cpus (void) {
  long n;
#if defined(CPU_COUNT)
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0 && CPU_COUNT(&set) > 0)
    return CPU_COUNT(&set);
#endif
  n = sysconf(_SC_NPROCESSORS_ONLN);
  return n < 1 ? 1 : (int)n;
}


static int isfinal (int s) {
  return s == JOB_DONE || s == JOB_FAILED;
}

static int job_ended (Job *j) {
  return isfinal(atomic_load_explicit(&j->status, memory_order_acquire));
}


/*
** Spin until 'j' ends or ISOLATE_SPIN_US have passed; true if it ended.
** A caller about to sleep until its job ends spins first: waking it costs
** more than many a small isolate's whole run.  (Workers do not spin for
** jobs: on a machine with few cores a spinning idle worker takes the core
** that the running job needs, and measured slower.)
*/
static int spin_until_ended (Job *j) {
  struct timespec t0, t;
  long i;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  for (i = 1; ; i++) {
    if (job_ended(j)) return 1;
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
    if (i % 64 == 0) {
      clock_gettime(CLOCK_MONOTONIC, &t);
      if ((t.tv_sec - t0.tv_sec) * 1000000L +
          (t.tv_nsec - t0.tv_nsec) / 1000 >= ISOLATE_SPIN_US)
        return job_ended(j);
    }
  }
}


/*
** {======================================================
** Jobs
** =======================================================
*/

Job *job_new (int depth) {
  Job *j = (Job *)calloc(1, sizeof(Job));
  pthread_condattr_t ca;
  int err;
  if (j == NULL) return NULL;
  pthread_condattr_init(&ca);
  pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);	/* for pool_wait */
  err = pthread_cond_init(&j->ended, &ca);
  pthread_condattr_destroy(&ca);
  if (err != 0) {
    free(j);
    return NULL;
  }
  j->refs = 1;
  j->depth = depth;
  atomic_init(&j->status, JOB_NEW);
  return j;
}


Buffer *job_input (Job *j) {
  return &j->in;
}


unsigned long job_id (Job *j) {
  return j->id;
}


void job_take_output (Job *j, Buffer *dst) {
  buffer_move(dst, &j->out);
}


/*
** A job of the parent process that a child sees queued or running: no
** thread of the child runs it.  It fails, without touching its condition
** variable, whose waiters (threads of the parent) do not exist here, nor
** its output, which a thread of the parent may have been writing.
*/
static void lose (Job *j) {		/* mutex held */
  j->out.head = j->out.tail = NULL;
  j->out.total = 0;
  message_putplain(&j->out, "error",
    "isolate: the process forked while this task was queued or running; "
    "it runs in the parent process only");
  atomic_store_explicit(&j->status, JOB_FAILED, memory_order_release);
}


static void job_unref (Pool *p, Job *j) {	/* mutex held */
  if (--j->refs == 0) {
    buffer_free(&j->in);
    buffer_free(&j->out);
    if (j->epoch == p->epoch)	/* see lose() */
      pthread_cond_destroy(&j->ended);
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
  if (!ended && j->epoch != p->epoch) {
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

/* }====================================================== */


/*
** {======================================================
** Threads
** =======================================================
*/

static const char *stack_low (void) {
  pthread_attr_t attr;
  void *addr = NULL;
  size_t size = 0;
  if (pthread_getattr_np(pthread_self(), &attr) == 0) {
    pthread_attr_getstack(&attr, &addr, &size);
    pthread_attr_destroy(&attr);
  }
  return (const char *)addr;
}


/* bytes of C stack left below the caller's frame */
static size_t stack_left (Worker *w) {
  const char *here = (const char *)__builtin_frame_address(0);
  if (w->stacklow == NULL || here < w->stacklow) return (size_t)-1;
  return (size_t)(here - w->stacklow);
}


/*
** A detached thread of the pool, with an explicit stack size and the
** asynchronous signals blocked.  Faults (SIGSEGV and the like) stay open:
** they belong to the thread that causes them.
*/
static int start_thread (Pool *p, void *(*fn) (void *), void *arg, int n) {
  pthread_attr_t attr;
  sigset_t all, old;
  pthread_t t;
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
  err = pthread_create(&t, &attr, fn, arg);
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  pthread_attr_destroy(&attr);
  if (err == 0 && n >= 0) {
    char name[64];
    snprintf(name, sizeof(name), "%s/%d", p->name ? p->name : "isolate", n);
    name[15] = '\0';		/* the kernel keeps 15 bytes of a thread's name */
    pthread_setname_np(t, name);
  }
  return err == 0;
}


/*
** Run a job taken from the queue in the fresh state 'L', publish its end.
** A thread that a fork left in the child (it forked from inside an
** isolate) finishes its job there, for nobody: then it ends the child
** process, which no thread of the pool would ever end otherwise.
*/
static void execute (Pool *p, Job *j, lua_State *L) {
  int ok = state_run(L, &j->in, &j->out, p->name, j->depth);
  int forked;
  pthread_mutex_lock(&p->mu);
  atomic_store_explicit(&j->status, ok ? JOB_DONE : JOB_FAILED, memory_order_release);
  forked = (j->epoch != p->epoch);
  if (!forked) pthread_cond_broadcast(&j->ended);	/* see lose() */
  job_unref(p, j);
  pthread_mutex_unlock(&p->mu);
  if (forked) _exit(ok ? 0 : 1);
}


/*
** A worker makes the state for its next job as soon as it has published
** the last one, so that making it is not part of the next round trip.
*/
static void *worker (void *arg) {
  Worker w;
  Pool *p = (Pool *)arg;
  lua_State *spare;
  w.pool = p;
  w.stacklow = stack_low();
  pthread_setspecific(worker_key, &w);
  spare = state_new();
  for (;;) {
    Job *j;
    pthread_mutex_lock(&p->mu);
    while (p->head == NULL) {
      p->sleeping++;
      pthread_cond_wait(&p->work, &p->mu);
      p->sleeping--;
    }
    j = p->head;
    p->head = j->next;
    if (p->head == NULL) p->tail = NULL;
    atomic_store_explicit(&j->status, JOB_RUNNING, memory_order_relaxed);
    pthread_mutex_unlock(&p->mu);
    execute(p, j, spare != NULL ? spare : state_new());
    spare = state_new();
  }
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
  free(arg);
  w.pool = lent.pool;
  w.stacklow = stack_low();
  pthread_setspecific(worker_key, &w);
  execute(lent.pool, lent.job, state_new());
  return NULL;
}

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
  atomic_store_explicit(&j->status, JOB_FAILED, memory_order_release);
  pthread_cond_broadcast(&j->ended);
  job_unref(p, j);		/* the queue's reference */
  pthread_mutex_unlock(&p->mu);
}

/* }====================================================== */


/*
** {======================================================
** Starting, forking
** =======================================================
*/

static void fork_prepare (void) {
  pthread_mutex_lock(&start_mu);
  pthread_mutex_lock(&default_pool.mu);
}

static void fork_parent (void) {
  pthread_mutex_unlock(&default_pool.mu);
  pthread_mutex_unlock(&start_mu);
}

/* the child has none of the pool's threads: start again on first use */
static void fork_child (void) {
  Pool *p = &default_pool;
  Job *j = p->head;
  p->epoch++;
  while (j != NULL) {
    Job *next = j->next;
    lose(j);
    job_unref(p, j);		/* the queue's reference */
    j = next;
  }
  p->head = p->tail = NULL;
  p->sleeping = 0;
  p->size = 0;
  pthread_cond_init(&p->work, NULL);	/* its waiters were the parent's */
  atomic_store(&started, 0);
  pthread_mutex_init(&p->mu, NULL);
  pthread_mutex_init(&start_mu, NULL);
}

static void init_once (void) {
  pthread_key_create(&worker_key, NULL);
  pthread_atfork(fork_prepare, fork_parent, fork_child);
}


size_t pool_stackleft (void) {
  Worker *w;
  if (pthread_once(&key_once, init_once) != 0 ||
      (w = (Worker *)pthread_getspecific(worker_key)) == NULL)
    return (size_t)-1;
  return stack_left(w);
}


Pool *pool_default (void) {
  Pool *p = &default_pool;
  if (!atomic_load_explicit(&started, memory_order_acquire)) {
    pthread_once(&key_once, init_once);
    pthread_mutex_lock(&start_mu);
    if (!atomic_load_explicit(&started, memory_order_relaxed)) {
      int i, n = pool_cpus();
      for (i = 0; i < n && start_thread(p, worker, p, i); i++) ;
      pthread_mutex_lock(&p->mu);
      p->size = i;
      pthread_mutex_unlock(&p->mu);
      atomic_store_explicit(&started, 1, memory_order_release);
    }
    pthread_mutex_unlock(&start_mu);
  }
  return p->size > 0 ? p : NULL;
}

/* }====================================================== */


void pool_submit (Pool *p, Job *j) {
  pthread_mutex_lock(&p->mu);
  j->refs++;
  j->id = ++p->nextid;
  j->epoch = p->epoch;
  atomic_store_explicit(&j->status, JOB_QUEUED, memory_order_relaxed);
  j->next = NULL;
  if (p->tail == NULL) p->head = j;
  else p->tail->next = j;
  p->tail = j;
  if (p->sleeping > 0)
    pthread_cond_signal(&p->work);
  pthread_mutex_unlock(&p->mu);
}


/* take 'j' out of the queue if it is still there; mutex held */
static int unqueue (Pool *p, Job *j) {
  Job **link = &p->head, *prev = NULL;
  while (*link != NULL && *link != j) {
    prev = *link;
    link = &(*link)->next;
  }
  if (*link == NULL) return 0;
  *link = j->next;
  if (p->tail == j) p->tail = prev;
  atomic_store_explicit(&j->status, JOB_RUNNING, memory_order_relaxed);
  return 1;
}


int pool_wait (Pool *p, Job *j, long ms, int runs) {
  Worker *w;
  struct timespec deadline;
  int ended;
  if (finished(p, j)) return 1;
  w = (Worker *)pthread_getspecific(worker_key);
  if (runs && w != NULL && w->pool == p) {
    int mine;
    pthread_mutex_lock(&p->mu);
    mine = atomic_load_explicit(&j->status, memory_order_relaxed) == JOB_QUEUED &&
           unqueue(p, j);
    pthread_mutex_unlock(&p->mu);
    if (mine) {		/* drops the queue's reference; the caller's remains */
      if (stack_left(w) >= ISOLATE_INLINE_STACK) {
        execute(p, j, state_new());
        return 1;
      }
      lend(p, j);
    }
  }
  if (ms > 0 && spin_until_ended(j)) return 1;	/* a poll only looks */
  clock_gettime(CLOCK_MONOTONIC, &deadline);
  deadline.tv_sec += ms / 1000;
  deadline.tv_nsec += (ms % 1000) * 1000000L;
  if (deadline.tv_nsec >= 1000000000L) {
    deadline.tv_sec++;
    deadline.tv_nsec -= 1000000000L;
  }
  pthread_mutex_lock(&p->mu);
  while (!(ended = job_ended(j)) &&
         pthread_cond_timedwait(&j->ended, &p->mu, &deadline) != ETIMEDOUT) ;
  pthread_mutex_unlock(&p->mu);
  return ended;
}
