/*
** mailbox.h: what a caller's event loop polls, and the messages of a task.
**
** A Bell is a file descriptor that a loop can poll (an eventfd on Linux,
** a pipe elsewhere), made only when somebody asks for it: readable while
** it rings, quiet again when told.  A Mailbox holds the messages that a
** running isolate emitted (isolate.emit) and its caller has not received
** yet, in order, each an encoded message (codec.h); its Bell rings while
** it holds a message or the task has ended.  Neither locks: their owner
** does (a Job's under its pool's mutex; a Task's is its Lua state's).
** A forked child shares its parent's descriptors, which the parent rings
** and quiets: a bell that the child inherited makes a new descriptor for
** the child when the child uses it, and leaves the parent's alone.
*/
#ifndef mailbox_h
#define mailbox_h

#include <stddef.h>

#include "buffer.h"

typedef struct Bell {
  int rfd, wfd;			/* the descriptor polled, the one written (-1: none) */
  int ringing;
  int pid;			/* the process that made the descriptor */
} Bell;

#define BELL_INIT	{-1, -1, 0, 0}

/* the descriptor to poll, made (and rung, if it should) on first use; -1 and errno */
int bell_fd (Bell *b);
/* ring (readable) or hush (not readable) the descriptor, if there is one */
void bell_set (Bell *b, int ringing);
void bell_close (Bell *b);

/*
** One message: a small one is copied into the Mail itself (one block for
** both, freed by the receiver), a large one keeps its buffer's chunks.
*/
typedef struct Mail {
  struct Mail *next;
  Buffer b;			/* a large message */
  size_t size;			/* a small message's bytes, in 'bytes' */
  unsigned char bytes[];
} Mail;

/* a reader over the message */
void mail_read (const Mail *mail, Reader *r);
void mail_free (Mail *mail);

typedef struct Mailbox {
  Mail *head, *tail;
  size_t n, bytes;		/* messages held, and their bytes */
  int ended;			/* no message will come any more */
  Bell bell;			/* rings while n > 0 or ended */
} Mailbox;

#define MAILBOX_INIT	{NULL, NULL, 0, 0, 0, BELL_INIT}

/* is it past the queue limit (ISOLATE_MAILBOX_*), so that an emitter waits? */
int mailbox_full (const Mailbox *m);
/* is it down to half of it, so that an emitter that waits goes on? */
int mailbox_half (const Mailbox *m);
/* append the message 'msg' (its bytes; 'msg' is left empty); 0 when memory runs out */
int mailbox_put (Mailbox *m, Buffer *msg);
/* the oldest message, for the caller to free (mail_free), or NULL */
Mail *mailbox_take (Mailbox *m);
/* no message will come any more */
void mailbox_end (Mailbox *m);
/* free every message held (the bell stays) */
void mailbox_clear (Mailbox *m);
/* move everything from 'src' to 'dst' (empty, without a bell), bell included */
void mailbox_move (Mailbox *dst, Mailbox *src);
/* free everything, bell included */
void mailbox_free (Mailbox *m);
/* the bell's descriptor (bell_fd), ringing if it should */
int mailbox_fd (Mailbox *m);

#endif
