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

/* names of the metatables that the core registers */
#define ISOLATE_TASK		"isolate.Task"
#define ISOLATE_REMOTEERROR	"isolate.RemoteError"

#endif
