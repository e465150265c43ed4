# The examples (examples/*.c): each a program linked with the static client
# library, built to $(B)/examples/<name> by `make`. Included at the end of
# the Makefile. See README.md, "Examples".

EXAMPLE_SRCS := $(if $(CLIENT_A),$(wildcard examples/*.c))
EXAMPLE_OBJS := $(call obj,$(EXAMPLE_SRCS))
EXAMPLES     := $(patsubst examples/%.c,$(B)/examples/%,$(EXAMPLE_SRCS))

all: $(EXAMPLES)

$(EXAMPLES): $(B)/examples/%: $(B)/obj/examples/%.o $(CLIENT_A)
	@mkdir -p $(@D)
	$(call msg,LD,$@)$(LINK) -o $@ $< $(CLIENT_A) $(CLIENT_LIBS) $(LDLIBS)

-include $(EXAMPLE_OBJS:.o=.d)
