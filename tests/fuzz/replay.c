/*
 * replay.c - runs a libFuzzer driver over saved inputs without libFuzzer,
 * so make test-fuzz replays the corpora with any compiler.
 *
 *	fuzz_X PATH...
 *
 * Each PATH is a file or a directory (walked recursively, in name order);
 * every regular file is read into a buffer of exactly its size (so ASan
 * sees any over-read) and passed to LLVMFuzzerTestOneInput. Prints
 * "replayed N inputs" and exits 0; exits 1 when a path cannot be read or
 * holds no input at all (a missing or emptied corpus must not pass).
 *
 * main() is weak: with clang -fsanitize=fuzzer (make fuzz), libFuzzer's
 * own main() takes over.
 */
#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#include <sanitizer/common_interface_defs.h>
#endif

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int main(int argc, char **argv);

static unsigned long replayed;
static const char *current;     /* the input being replayed */

/* Names the input that failed: on abort() (a driver's CHECK) and when a
 * sanitizer ends the process. */
static void
name_current(void)
{
	if (current != NULL &&
	    (write(2, "replay: failed on ", 18) < 0 ||
	     write(2, current, strlen(current)) < 0 ||
	     write(2, "\n", 1) < 0))
		return;
}

static void
on_abort(int sig)
{
	name_current();
	signal(sig, SIG_DFL);
	raise(sig);
}

static int
replay_file(const char *path, off_t size)
{
	/* Exactly size bytes, so an over-read hits ASan's redzone; an
	 * empty input still gets a real pointer. */
	uint8_t *buf = malloc(size > 0 ? (size_t)size : 1);
	FILE *fp;
	size_t n;

	if (buf == NULL) {
		fprintf(stderr, "%s: out of memory\n", path);
		return -1;
	}
	fp = fopen(path, "rb");
	if (fp == NULL) {
		fprintf(stderr, "%s: %s\n", path, strerror(errno));
		free(buf);
		return -1;
	}
	n = fread(buf, 1, (size_t)size, fp);
	fclose(fp);
	if (n != (size_t)size) {
		fprintf(stderr, "%s: short read\n", path);
		free(buf);
		return -1;
	}
	current = path;
	LLVMFuzzerTestOneInput(buf, n);
	current = NULL;
	free(buf);
	replayed++;
	return 0;
}

static int
by_name(const struct dirent **a, const struct dirent **b)
{
	return strcmp((*a)->d_name, (*b)->d_name);
}

static int
replay_path(const char *path)
{
	struct stat st;
	struct dirent **list;
	int n, rc = 0;

	if (stat(path, &st) != 0) {
		fprintf(stderr, "%s: %s\n", path, strerror(errno));
		return -1;
	}
	if (S_ISREG(st.st_mode))
		return replay_file(path, st.st_size);
	if (!S_ISDIR(st.st_mode))
		return 0; /* sockets, fifos: not inputs */
	n = scandir(path, &list, NULL, by_name);
	if (n < 0) {
		fprintf(stderr, "%s: %s\n", path, strerror(errno));
		return -1;
	}
	for (int i = 0; i < n; i++) {
		const char *name = list[i]->d_name;
		char *child;

		if (strcmp(name, ".") != 0 && strcmp(name, "..") != 0) {
			if (asprintf(&child, "%s/%s", path, name) < 0) {
				rc = -1;
			} else {
				if (replay_path(child) != 0)
					rc = -1;
				free(child);
			}
		}
		free(list[i]);
	}
	free(list);
	return rc;
}

__attribute__((weak)) int
main(int argc, char **argv)
{
	int rc = 0;

	signal(SIGABRT, on_abort);
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
	__sanitizer_set_death_callback(name_current);
#endif
	if (argc < 2) {
		fprintf(stderr, "usage: %s FILE_OR_DIR...\n", argv[0]);
		return 2;
	}
	for (int i = 1; i < argc; i++) {
		unsigned long before = replayed;

		if (replay_path(argv[i]) != 0)
			rc = 1;
		else if (replayed == before) {
			fprintf(stderr, "%s: no inputs to replay\n", argv[i]);
			rc = 1;
		}
	}
	printf("replayed %lu inputs\n", replayed);
	return rc;
}
