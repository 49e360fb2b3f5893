/*
** isolate.h: limits and types shared by every part of the C core.
** Each limit can be overridden from the compiler command line.
*/
#ifndef isolate_h
#define isolate_h

#include "lua.h"

/* deepest nesting of tables, functions and upvalues that one transfer takes */
#if !defined(ISOLATE_MAXDEPTH)
#define ISOLATE_MAXDEPTH	200
#endif

/* first chunk of a transfer buffer; later chunks double up to the cap */
#if !defined(ISOLATE_CHUNK_MIN)
#define ISOLATE_CHUNK_MIN	512
#endif
#if !defined(ISOLATE_CHUNK_MAX)
#define ISOLATE_CHUNK_MAX	(1u << 20)
#endif

/*
** How long a caller about to sleep until its job ends spins first
** (microseconds).  Waking a sleeping thread costs tens of microseconds on
** some machines, more than a small isolate's whole run.
*/
#if !defined(ISOLATE_SPIN_US)
#define ISOLATE_SPIN_US		50
#endif

/* names of the metatables that the core registers */
#define ISOLATE_TASK		"isolate.Task"
#define ISOLATE_REMOTEERROR	"isolate.RemoteError"

#endif
