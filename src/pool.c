/*
** pool.c: the worker threads, their queue, and waiting for a job.
**
** The default pool is the one process-wide object of the core: every
** lua_State that requires the module, in any thread, shares it.  It is
** made on first use (pthread_once), its threads are started then and run
** until the process ends, and it is guarded by its mutex.
**
** A worker that waits for a job still in the queue takes that job and runs
** it itself.  So a task that spawns and awaits tasks of its own never waits
** for a slot held by itself or by a task waiting on it: nested isolates do
** not deadlock, whatever the pool size.
*/
#define _GNU_SOURCE		/* pthread_setname_np, sched_getaffinity */
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#include "isolate.h"
#include "pool.h"
#include "state.h"


struct Pool {
  pthread_mutex_t mu;
  pthread_cond_t work;		/* signalled when a job is queued */
  Job *head, *tail;		/* the queue, FIFO */
  int sleeping;			/* workers waiting on 'work' */
  int size;			/* worker threads */
  unsigned long nextid;
  const char *name;		/* NULL for the default pool */
};

static Pool default_pool;
static pthread_once_t default_once = PTHREAD_ONCE_INIT;

/*
** The pool whose worker this thread is (NULL elsewhere).  A pthread key,
** not _Thread_local: the dynamic TLS of a dlopen'ed library is beyond
** what some tools walk (LeakSanitizer's tracer crashes on it).
*/
static pthread_key_t worker_of;


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


static int isfinal (JobStatus s) {
  return s == JOB_DONE || s == JOB_FAILED;
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
    if (isfinal(atomic_load_explicit(&j->status, memory_order_acquire)))
      return 1;
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
    if (i % 64 == 0) {
      clock_gettime(CLOCK_MONOTONIC, &t);
      if ((t.tv_sec - t0.tv_sec) * 1000000L +
          (t.tv_nsec - t0.tv_nsec) / 1000 >= ISOLATE_SPIN_US)
        return isfinal(atomic_load_explicit(&j->status, memory_order_acquire));
    }
  }
}


Job *job_new (void) {
  Job *j = (Job *)calloc(1, sizeof(Job));
  if (j == NULL) return NULL;
  if (pthread_cond_init(&j->ended, NULL) != 0) {
    free(j);
    return NULL;
  }
  j->refs = 1;
  atomic_init(&j->status, JOB_NEW);
  return j;
}


static void job_unref (Job *j) {	/* pool mutex held */
  if (--j->refs == 0) {
    buffer_free(&j->in);
    buffer_free(&j->out);
    pthread_cond_destroy(&j->ended);
    free(j);
  }
}


void job_release (Pool *p, Job *j) {
  pthread_mutex_lock(&p->mu);
  job_unref(j);
  pthread_mutex_unlock(&p->mu);
}


/* run a job taken from the queue in the fresh state 'L', publish its end */
static void execute (Pool *p, Job *j, lua_State *L) {
  int ok = state_run(L, &j->in, &j->out, p->name);
  pthread_mutex_lock(&p->mu);
  atomic_store_explicit(&j->status, ok ? JOB_DONE : JOB_FAILED, memory_order_release);
  pthread_cond_broadcast(&j->ended);
  job_unref(j);
  pthread_mutex_unlock(&p->mu);
}


/*
** A worker makes the state for its next job as soon as it has published
** the last one, so that making it is not part of the next round trip.
*/
static void *worker (void *arg) {
  Pool *p = (Pool *)arg;
  lua_State *spare = state_new();
  pthread_setspecific(worker_of, p);
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


static void start_default (void) {
  Pool *p = &default_pool;
  pthread_attr_t attr;
  int i;
  pthread_key_create(&worker_of, NULL);
  pthread_mutex_init(&p->mu, NULL);
  pthread_cond_init(&p->work, NULL);
  p->size = pool_cpus();
  pthread_attr_init(&attr);
  pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
  for (i = 0; i < p->size; i++) {
    pthread_t t;
    char name[64];
    if (pthread_create(&t, &attr, worker, p) != 0) break;
    snprintf(name, sizeof(name), "%s/%d", p->name ? p->name : "isolate", i);
    name[15] = '\0';		/* the kernel keeps 15 bytes of a thread's name */
    pthread_setname_np(t, name);
  }
  p->size = i;
  pthread_attr_destroy(&attr);
}


/* the default pool, or NULL if no worker thread could be started */
Pool *pool_default (void) {
  pthread_once(&default_once, start_default);
  return default_pool.size > 0 ? &default_pool : NULL;
}


void pool_submit (Pool *p, Job *j) {
  pthread_mutex_lock(&p->mu);
  j->refs++;
  j->id = ++p->nextid;
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


void pool_await (Pool *p, Job *j) {
  pthread_mutex_lock(&p->mu);
  if (pthread_getspecific(worker_of) == p && j->status == JOB_QUEUED &&
      unqueue(p, j)) {
    pthread_mutex_unlock(&p->mu);
    execute(p, j, state_new());	/* drops the queue's reference; ours remains */
    return;
  }
  pthread_mutex_unlock(&p->mu);
  if (spin_until_ended(j)) return;
  pthread_mutex_lock(&p->mu);
  while (!isfinal(j->status))
    pthread_cond_wait(&j->ended, &p->mu);
  pthread_mutex_unlock(&p->mu);
}


JobStatus pool_status (Job *j) {
  return (JobStatus)atomic_load_explicit(&j->status, memory_order_acquire);
}
