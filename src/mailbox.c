/*
** mailbox.c: bells that event loops poll, and the messages of a task
** (mailbox.h).
*/
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#if defined(__linux__)
#include <sys/eventfd.h>
#endif

#include "isolate.h"
#include "mailbox.h"


/*
** {======================================================
** Bells
** =======================================================
*/

/* a descriptor inherited from the parent process is the parent's */
static void forget_parents (Bell *b) {
  if (b->rfd >= 0 && b->pid != (int)getpid()) {
    close(b->rfd);		/* (the child's copy only) */
    if (b->wfd != b->rfd) close(b->wfd);
    b->rfd = b->wfd = -1;
  }
}


int bell_fd (Bell *b) {
  forget_parents(b);
  if (b->rfd < 0) {
    int ringing = b->ringing;
#if defined(__linux__)
    int fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (fd < 0) return -1;
    b->rfd = b->wfd = fd;
#else
    int fds[2], i;		/* (pipe2 is not everywhere: macOS) */
    if (pipe(fds) != 0) return -1;
    for (i = 0; i < 2; i++)
      if (fcntl(fds[i], F_SETFD, FD_CLOEXEC) != 0 ||
          fcntl(fds[i], F_SETFL, fcntl(fds[i], F_GETFL) | O_NONBLOCK) != 0) {
        close(fds[0]);
        close(fds[1]);
        return -1;
      }
    b->rfd = fds[0];
    b->wfd = fds[1];
#endif
    b->pid = (int)getpid();
    b->ringing = 0;
    bell_set(b, ringing);
  }
  return b->rfd;
}


void bell_set (Bell *b, int ringing) {
  ringing = ringing != 0;
  if (b->rfd >= 0 && ringing != b->ringing && b->pid != (int)getpid()) {
    forget_parents(b);
    b->ringing = ringing;
    bell_fd(b);			/* the child's own, in this state */
    return;
  }
  if (b->rfd >= 0 && ringing != b->ringing) {
    if (ringing) {
      uint64_t one = 1;		/* (one byte of it for a pipe) */
      ssize_t r;
      do r = write(b->wfd, &one, b->rfd == b->wfd ? sizeof(one) : 1);
      while (r < 0 && errno == EINTR);
    }
    else {
      uint64_t v;
      ssize_t r;
      do r = read(b->rfd, &v, sizeof(v));
      while (r < 0 && errno == EINTR);
    }
  }
  b->ringing = ringing;
}


void bell_close (Bell *b) {
  if (b->rfd >= 0) {		/* (a parent's: the child's copy only) */
    close(b->rfd);
    if (b->wfd != b->rfd) close(b->wfd);
  }
  b->rfd = b->wfd = -1;
  b->ringing = 0;
}

/* }====================================================== */


/*
** {======================================================
** Mailboxes
** =======================================================
*/

static void ring (Mailbox *m) {
  bell_set(&m->bell, m->n > 0 || m->ended);
}


int mailbox_full (const Mailbox *m) {
  return m->n >= ISOLATE_MAILBOX_MESSAGES || m->bytes >= ISOLATE_MAILBOX_BYTES;
}


int mailbox_half (const Mailbox *m) {
  return m->n <= ISOLATE_MAILBOX_MESSAGES / 2 && m->bytes <= ISOLATE_MAILBOX_BYTES / 2;
}


/* the bytes of a message that are copied into its Mail (a larger one moves) */
#define MAIL_SMALL	1024


void mail_read (const Mail *mail, Reader *r) {
  if (mail->b.total > 0) reader_init(r, &mail->b);
  else reader_initflat(r, mail->bytes, mail->size);
}


void mail_free (Mail *mail) {
  if (mail != NULL) {
    buffer_free(&mail->b);
    free(mail);
  }
}


int mailbox_put (Mailbox *m, Buffer *msg) {
  size_t small = msg->total <= MAIL_SMALL ? msg->total : 0;
  Mail *mail = (Mail *)malloc(sizeof(Mail) + small);
  if (mail == NULL) {
    buffer_free(msg);
    return 0;
  }
  mail->next = NULL;
  mail->b.head = mail->b.tail = NULL;
  mail->b.total = mail->b.borrowed = 0;
  mail->b.owner = NULL;
  mail->size = small;
  if (small > 0) {		/* (a message is never empty: it has a header) */
    unsigned char *p = mail->bytes;
    Chunk *c;
    for (c = msg->head; c != NULL; c = c->next) {
      memcpy(p, c->data, c->used);
      p += c->used;
    }
    buffer_free(msg);
  }
  else buffer_move(&mail->b, msg);
  if (m->tail == NULL) m->head = mail;
  else m->tail->next = mail;
  m->tail = mail;
  m->n++;
  m->bytes += mail->size + mail->b.total;
  ring(m);
  return 1;
}


Mail *mailbox_take (Mailbox *m) {
  Mail *mail = m->head;
  if (mail == NULL) return NULL;
  if ((m->head = mail->next) == NULL) m->tail = NULL;
  m->n--;
  m->bytes -= mail->size + mail->b.total;
  ring(m);
  return mail;
}


void mailbox_end (Mailbox *m) {
  m->ended = 1;
  ring(m);
}


void mailbox_clear (Mailbox *m) {
  while (m->head != NULL) {
    Mail *mail = m->head;
    m->head = mail->next;
    mail_free(mail);
  }
  m->tail = NULL;
  m->n = m->bytes = 0;
  ring(m);
}


void mailbox_move (Mailbox *dst, Mailbox *src) {
  *dst = *src;
  src->head = src->tail = NULL;
  src->n = src->bytes = 0;
  src->bell.rfd = src->bell.wfd = -1;
  src->bell.ringing = 0;
}


void mailbox_free (Mailbox *m) {
  mailbox_clear(m);
  bell_close(&m->bell);
}


int mailbox_fd (Mailbox *m) {
  return bell_fd(&m->bell);	/* (ring() kept its state without a descriptor) */
}

/* }====================================================== */
