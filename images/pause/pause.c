/*
 * pause: the sandbox ("infra") container of every pod on the local node.
 *
 * It holds the pod's namespaces open and does nothing else: it waits for
 * signals, exits 0 on SIGINT or SIGTERM, and, being PID 1 of the pod when the
 * pod shares its PID namespace, reaps every child that is re-parented to it.
 * Written for elastic_airflow.cluster (images/pause); built with gcc -static.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define VERSION "3.10"

int main(int argc, char **argv)
{
    sigset_t wanted;
    int sig;

    if (argc > 1 && (strcmp(argv[1], "-v") == 0 || strcmp(argv[1], "--version") == 0)) {
        printf("pause %s (elastic_airflow.cluster)\n", VERSION);
        return 0;
    }
    if (getpid() != 1)
        fprintf(stderr, "pause: warning: not PID 1\n");

    /* Block the signals we act on and take them synchronously. */
    sigemptyset(&wanted);
    sigaddset(&wanted, SIGINT);
    sigaddset(&wanted, SIGTERM);
    sigaddset(&wanted, SIGCHLD);
    if (sigprocmask(SIG_BLOCK, &wanted, NULL) != 0) {
        perror("pause: sigprocmask");
        return 1;
    }
    for (;;) {
        sig = sigwaitinfo(&wanted, NULL);
        if (sig < 0) {
            if (errno == EINTR)
                continue;
            perror("pause: sigwaitinfo");
            return 1;
        }
        if (sig == SIGCHLD) {
            /* One SIGCHLD may stand for several exits: reap them all. */
            while (waitpid(-1, NULL, WNOHANG) > 0)
                ;
            continue;
        }
        fprintf(stderr, "pause: shutting down, got signal %d\n", sig);
        return 0;
    }
}
