/* threads.c — a call's jobs on threads: the pool kept between calls, threads started for one
 * call, and the barrier a team meets at (internal.h). */
#include <string.h>
#include "internal.h"

#ifdef LRT_HAVE_PTHREAD
#include <pthread.h>
#include <sched.h>
#include <unistd.h>

/* Cores online, read once (a benign race: every reader computes the same). */
static int online_cores(void)
{
    static int cores;
    int n = __atomic_load_n(&cores, __ATOMIC_RELAXED);
    if (!n) {
        const long online = sysconf(_SC_NPROCESSORS_ONLN);
        n = online < 1 ? 1 : online > LRT_MAX_THREADS ? LRT_MAX_THREADS : (int)online;
        __atomic_store_n(&cores, n, __ATOMIC_RELAXED);
    }
    return n;
}
/* first unit of member i of nt: near-equal shares in whole LRT_PAD groups */
static int32_t unit_start(const lrt_weights *w, int nt, int i)
{
    return (int32_t)(LRT_PAD * ((int64_t)(w->hp / LRT_PAD) * i / nt));
}


struct lrt_team {
    int size;    /* members */
    int count;   /* members arrived at the barrier */
    int sense;   /* flips when the last arrives */
    int go;      /* set once every member's units are assigned */
    unsigned spins;   /* spins at the barrier before yielding the core */
};

/* A sense-reversing barrier.  Members spin (a step is tens of microseconds and the wait
 * usually far less), then yield.  A team larger than the cores online yields at once: its
 * members would spin while the one they wait for is descheduled (8 members on this 2-core
 * VM ran slower than one thread). */
void lrt_team_wait(lrt_member *m)
{
    lrt_team *t = m->team;
    const int sense = m->sense = !m->sense;
    if (__atomic_add_fetch(&t->count, 1, __ATOMIC_ACQ_REL) == t->size) {
        __atomic_store_n(&t->count, 0, __ATOMIC_RELAXED);
        __atomic_store_n(&t->sense, sense, __ATOMIC_RELEASE);
        return;
    }
    for (unsigned spins = 0; __atomic_load_n(&t->sense, __ATOMIC_ACQUIRE) != sense; spins++)
        if (spins >= t->spins) sched_yield();
}

static void *run_job(void *arg)
{
    lrt_job *job = arg;
    if (job->member)   /* a team member starts once the team knows its size */
        while (!__atomic_load_n(&job->member->team->go, __ATOMIC_ACQUIRE)) sched_yield();
    job->status = job->w->run(job->w, job->a, job->b0, job->b1, job->ws, &job->sweep, job->member);
    return NULL;
}

/* The team of jobs[0..nt): its size and each member's units; then the members may start. */
static void form_team(lrt_job *jobs, int nt, lrt_team *team)
{
    team->size = nt;
    team->spins = nt <= online_cores() ? 2000 : 0;
    for (int i = 0; i < nt; i++) {
        jobs[i].member->u0 = unit_start(jobs[i].w, nt, i);
        jobs[i].member->u1 = unit_start(jobs[i].w, nt, i + 1);
    }
    __atomic_store_n(&team->go, 1, __ATOMIC_RELEASE);
}

static int status_of(const lrt_job *jobs, int nt)
{
    int st = LRT_OK;
    for (int i = 0; i < nt; i++)
        if (jobs[i].status != LRT_OK) st = jobs[i].status;
    return st;
}

/* jobs[0] runs here, the others on threads started for them; a slice whose thread cannot start
 * runs here too.  A team is sized to the threads that started (the members wait for `go`). */
static int run_jobs_fresh(lrt_job *jobs, int nt, lrt_team *team)
{
    pthread_t tids[LRT_MAX_THREADS];
    int started[LRT_MAX_THREADS] = {0};
    for (int i = 1; i < nt; i++) {
        started[i] = pthread_create(&tids[i], NULL, run_job, &jobs[i]) == 0;
        if (team && !started[i]) {
            nt = i;
            break;
        }
    }
    if (team) form_team(jobs, nt, team);
    run_job(&jobs[0]);
    for (int i = 1; i < nt; i++) {
        if (started[i]) pthread_join(tids[i], NULL);
        else run_job(&jobs[i]);
    }
    return status_of(jobs, nt);
}

/* ---- the pool: threads kept between calls ----
 * Starting threads cost ~80 us a call here, more than a whole step of most streaming calls.
 * Worker i takes its jobs from its own slot; one call at a time uses the pool (a call that
 * finds it busy starts threads of its own).  Idle workers spin a while, since a streaming
 * caller comes back within microseconds, then sleep. */
#define LRT_POOL_SPINS 20000

static struct {
    pthread_mutex_t owner;   /* held by the call using the pool */
    pthread_mutex_t lock;    /* with wake and done: sleeping and waking */
    pthread_cond_t wake, done;
    int workers;             /* started so far */
    int sleepers;            /* workers waiting on wake (under lock) */
    int pending;             /* jobs handed out and not finished */
    lrt_job *slot[LRT_MAX_THREADS];   /* worker i's job, or NULL */
} pool = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER,
          PTHREAD_COND_INITIALIZER, 0, 0, 0, {0}};
static pthread_once_t pool_once = PTHREAD_ONCE_INIT;
static int worker_index[LRT_MAX_THREADS];

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

static void *pool_worker(void *arg)
{
    lrt_job **slot = &pool.slot[*(const int *)arg];
    for (;;) {
        lrt_job *job;
        for (int spins = 0; !(job = __atomic_load_n(slot, __ATOMIC_ACQUIRE)) && spins < LRT_POOL_SPINS; spins++)
            cpu_relax();
        if (!job) {
            pthread_mutex_lock(&pool.lock);
            pool.sleepers++;
            while (!(job = __atomic_load_n(slot, __ATOMIC_ACQUIRE))) pthread_cond_wait(&pool.wake, &pool.lock);
            pool.sleepers--;
            pthread_mutex_unlock(&pool.lock);
        }
        run_job(job);
        __atomic_store_n(slot, NULL, __ATOMIC_RELAXED);
        if (__atomic_sub_fetch(&pool.pending, 1, __ATOMIC_ACQ_REL) == 0) {
            pthread_mutex_lock(&pool.lock);
            pthread_cond_signal(&pool.done);
            pthread_mutex_unlock(&pool.lock);
        }
    }
    return NULL;
}

/* a forked child has none of the parent's threads: it starts its own pool */
static void pool_after_fork(void)
{
    pthread_mutex_init(&pool.owner, NULL);
    pthread_mutex_init(&pool.lock, NULL);
    pthread_cond_init(&pool.wake, NULL);
    pthread_cond_init(&pool.done, NULL);
    pool.workers = pool.sleepers = pool.pending = 0;
    memset(pool.slot, 0, sizeof pool.slot);
}

static void pool_init(void)
{
    pthread_atfork(NULL, NULL, pool_after_fork);
}

/* workers until there are n (or as many as start); returns how many there are */
static int pool_grow(int n)
{
    for (int i = pool.workers; i < n; i++) {
        pthread_t tid;
        worker_index[i] = i;
        if (pthread_create(&tid, NULL, pool_worker, &worker_index[i]) != 0) break;
        pthread_detach(tid);
        pool.workers = i + 1;
    }
    return pool.workers;
}

/* jobs[1..] on the pool's workers (the caller holds pool.owner), jobs[0] here; slices beyond
 * the workers run here too, a team is sized to the workers there are */
static int run_jobs_pooled(lrt_job *jobs, int nt, lrt_team *team)
{
    const int workers = pool_grow(nt - 1);
    const int handed = nt - 1 < workers ? nt - 1 : workers;
    if (team) {
        nt = handed + 1;
        form_team(jobs, nt, team);
    }
    __atomic_store_n(&pool.pending, handed, __ATOMIC_RELAXED);
    for (int i = 0; i < handed; i++) __atomic_store_n(&pool.slot[i], &jobs[i + 1], __ATOMIC_RELEASE);
    pthread_mutex_lock(&pool.lock);
    if (pool.sleepers) pthread_cond_broadcast(&pool.wake);
    pthread_mutex_unlock(&pool.lock);
    run_job(&jobs[0]);
    for (int i = handed + 1; i < nt; i++) run_job(&jobs[i]);
    for (int spins = 0; __atomic_load_n(&pool.pending, __ATOMIC_ACQUIRE) && spins < LRT_POOL_SPINS; spins++)
        cpu_relax();
    pthread_mutex_lock(&pool.lock);
    while (__atomic_load_n(&pool.pending, __ATOMIC_ACQUIRE)) pthread_cond_wait(&pool.done, &pool.lock);
    pthread_mutex_unlock(&pool.lock);
    return status_of(jobs, nt);
}

int lrt_pool_take(int long_call)
{
    pthread_once(&pool_once, pool_init);
    if (pthread_mutex_trylock(&pool.owner) == 0) return 1;
    return long_call ? 0 : -1;
}

int lrt_jobs_run(lrt_job *jobs, int nt, int team, int pooled)
{
    lrt_team t = {0, 0, 0, 0, 0};
    if (team)
        for (int i = 0; i < nt; i++) jobs[i].member->team = &t;
    if (!pooled) return run_jobs_fresh(jobs, nt, team ? &t : NULL);
    const int st = run_jobs_pooled(jobs, nt, team ? &t : NULL);
    pthread_mutex_unlock(&pool.owner);
    return st;
}
#else
void lrt_team_wait(lrt_member *m)
{
    (void)m;   /* no teams without threads */
}

int lrt_pool_take(int long_call)
{
    (void)long_call;
    return -1;   /* no threads: every call runs alone */
}

int lrt_jobs_run(lrt_job *jobs, int nt, int team, int pooled)
{
    (void)jobs, (void)nt, (void)team, (void)pooled;
    return LRT_E_ARG;   /* not reached: lrt_pool_take never hands out threads here */
}
#endif
