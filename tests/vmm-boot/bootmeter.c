/* bootmeter: runs a VMM, timestamps the first console line containing a
 * pattern, measures the VMM's memory at that moment, and waits for it to exit.
 * Used to compare VMMs booting the same kernel in the same (nested) host.
 *
 *   bootmeter [--fifo PATH] [--timeout SECS] PATTERN GUEST_MIB -- CMD [ARGS...]
 *
 * The console is read from CMD's stdout, or from the named pipe PATH (created
 * here) for VMMs that write their serial port to a file. When the pattern
 * shows up, CMD is stopped (SIGSTOP) while /proc/PID/smaps is read, then
 * continued. Mappings of GUEST_MIB .. GUEST_MIB+4 MiB are taken as guest RAM;
 * everything else is the VMM's own memory, of which vmm_anon is the private
 * anonymous part (file-backed text is shared by every instance of the binary).
 * With --timeout, CMD is killed (SIGKILL) once it has run SECS seconds, and
 * status is "timeout". Console lines are copied to stderr. Last line, on
 * stdout:
 *   bootmeter: line_ms=.. exit_ms=.. rss_kib=.. guest_rss_kib=.. vmm_rss_kib=..
 *              vmm_anon_kib=.. status=..
 * line_ms is -1.0 when the pattern never showed (and bootmeter exits 1).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <poll.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

/* Sums Rss over all mappings and over those sized like guest RAM, and the
 * anonymous (private, not file-backed) part of the others. */
static void measure(pid_t pid, long guest_kib, long *total, long *guest, long *anon) {
    char path[64];
    snprintf(path, sizeof(path), "/proc/%d/smaps", (int)pid);
    FILE *f = fopen(path, "r");
    *total = *guest = *anon = -1;
    if (!f) return;
    *total = *guest = *anon = 0;
    char line[512];
    long size = 0;
    while (fgets(line, sizeof(line), f)) {
        long v;
        int is_guest = size >= guest_kib && size <= guest_kib + 4096;
        if (sscanf(line, "Size: %ld kB", &v) == 1) {
            size = v;
        } else if (sscanf(line, "Rss: %ld kB", &v) == 1) {
            *total += v;
            if (is_guest) *guest += v;
        } else if (sscanf(line, "Anonymous: %ld kB", &v) == 1) {
            if (!is_guest) *anon += v;
        }
    }
    fclose(f);
}

int main(int argc, char **argv) {
    const char *fifo = NULL;
    double timeout_ms = -1;
    int i = 1;
    for (;;) {
        if (i + 1 < argc && strcmp(argv[i], "--fifo") == 0) {
            fifo = argv[i + 1];
            i += 2;
        } else if (i + 1 < argc && strcmp(argv[i], "--timeout") == 0) {
            timeout_ms = atof(argv[i + 1]) * 1e3;
            i += 2;
        } else {
            break;
        }
    }
    if (argc - i < 4 || strcmp(argv[i + 2], "--") != 0) {
        fprintf(stderr, "usage: bootmeter [--fifo PATH] [--timeout SECS] PATTERN GUEST_MIB -- "
                        "CMD [ARGS...]\n");
        return 2;
    }
    const char *pattern = argv[i];
    long guest_kib = atol(argv[i + 1]) * 1024;
    char **cmd = &argv[i + 3];

    int pipefd[2] = {-1, -1};
    if (fifo) {
        unlink(fifo);
        if (mkfifo(fifo, 0600) != 0) {
            perror("bootmeter: mkfifo");
            return 2;
        }
    } else if (pipe(pipefd) != 0) {
        perror("bootmeter: pipe");
        return 2;
    }
    double t0 = now_ms();
    pid_t pid = fork();
    if (pid < 0) {
        perror("bootmeter: fork");
        return 2;
    }
    if (pid == 0) {
        if (!fifo) {
            dup2(pipefd[1], 1);
            close(pipefd[0]);
            close(pipefd[1]);
        }
        execvp(cmd[0], cmd);
        perror("bootmeter: exec");
        _exit(127);
    }
    /* The fifo is opened read-write so that neither open nor read blocks when
     * the VMM never opens it (e.g. it failed to start); the loop ends when the
     * child exits. */
    int in;
    if (fifo) {
        in = open(fifo, O_RDWR | O_NONBLOCK);
    } else {
        close(pipefd[1]);
        in = pipefd[0];
        fcntl(in, F_SETFL, O_NONBLOCK);
    }
    double line_ms = -1;
    long total = -1, guest = -1, anon = -1;
    char buf[8192];
    size_t len = 0;
    int status = 0, exited = 0, last_pass = 0, timed_out = 0;
    while (!last_pass) {
        if (!exited && !timed_out && timeout_ms > 0 && now_ms() - t0 > timeout_ms) {
            kill(pid, SIGKILL);
            timed_out = 1;
        }
        /* One more read after the child is gone, for its last output. */
        last_pass = exited;
        struct pollfd pfd = {.fd = in, .events = POLLIN};
        if (!exited) poll(&pfd, 1, 50);
        for (;;) {
            ssize_t n = in >= 0 ? read(in, buf + len, sizeof(buf) - 1 - len) : -1;
            if (n <= 0) break;
            len += (size_t)n;
            buf[len] = 0;
            char *nl;
            while ((nl = memchr(buf, '\n', len)) != NULL) {
                size_t ll = (size_t)(nl - buf) + 1;
                fwrite(buf, 1, ll, stderr);
                char saved = buf[ll - 1];
                buf[ll - 1] = 0;
                if (line_ms < 0 && strstr(buf, pattern)) {
                    line_ms = now_ms() - t0;
                    kill(pid, SIGSTOP);
                    measure(pid, guest_kib, &total, &guest, &anon);
                    kill(pid, SIGCONT);
                }
                buf[ll - 1] = saved;
                memmove(buf, buf + ll, len - ll);
                len -= ll;
            }
            if (len == sizeof(buf) - 1) len = 0; /* an overlong line: drop it */
        }
        if (!exited) {
            pid_t r = waitpid(pid, &status, WNOHANG);
            if (r == pid || (r < 0 && errno != EINTR)) exited = 1;
        }
    }
    double exit_ms = now_ms() - t0;
    if (fifo) unlink(fifo);
    char status_text[16];
    if (timed_out)
        snprintf(status_text, sizeof(status_text), "timeout");
    else
        snprintf(status_text, sizeof(status_text), "%d",
                 WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status));
    printf("bootmeter: line_ms=%.1f exit_ms=%.1f rss_kib=%ld guest_rss_kib=%ld vmm_rss_kib=%ld "
           "vmm_anon_kib=%ld status=%s\n",
           line_ms, exit_ms, total, guest, total >= 0 ? total - guest : -1, anon, status_text);
    return line_ms < 0 ? 1 : 0;
}
